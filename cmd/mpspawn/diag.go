package main

import (
	"fmt"
	"io"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/urfave/cli/v2"
)

// Diagnosis flags: what a job cost, and what it was doing when it hung.
const (
	fQuiet = "quiet"
)

func diagFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Category: catFailure, Name: fQuiet, Aliases: []string{"q"}, Usage: "on success, do not print the line with the ranks' time, CPU and peak memory"},
	}
}

// diagConfig is the validated diagnosis flags.
type diagConfig struct {
	quiet bool
}

func parseDiag(c *cli.Context) (diagConfig, error) {
	return diagConfig{quiet: c.Bool(fQuiet)}, nil
}

// reportSuccess writes the one line that sums up a job that succeeded:
// "mpspawn: 4 ranks ok in 12.4 s; CPU 46.1 s; peak memory 1.2 GiB (rank 2)".
func (d diagConfig) reportSuccess(w io.Writer, res *launcher.Result) {
	if d.quiet || !res.Succeeded() {
		return
	}
	if line := res.CostLine(); line != "" {
		fmt.Fprintf(w, "mpspawn: %s\n", line)
	}
}
