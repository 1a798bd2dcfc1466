package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/urfave/cli/v2"
)

// launch runs a validated job and turns its result into an exit code,
// after every rank has been reaped.
func launch(c *cli.Context, cfg *config) error {
	stderr := c.App.ErrWriter
	rdzv, err := rendezvous.Static(cfg.rdzv)
	if errors.Is(err, rendezvous.ErrConfig) {
		return usageError{err}
	}
	if err != nil {
		return err
	}
	defer rdzv.Close()
	logDir := cfg.logDir
	if logDir == "" {
		if logDir, err = os.MkdirTemp("", "mpspawn_"); err != nil {
			return fmt.Errorf("log dir: %w", err)
		}
		if cfg.keepLogDir {
			fmt.Fprintf(stderr, "mpspawn: log files go to %s\n", logDir)
		} else {
			defer os.RemoveAll(logDir)
		}
	}
	cfg.output.Stdout, cfg.output.Stderr = c.App.Writer, stderr
	job := &launcher.Job{
		Path: cfg.path, Command: cfg.argv, Env: os.Environ(),
		NProcPerNode: rdzv.NProcPerNode, NNodes: rdzv.NNodes, NodeRank: rdzv.NodeRank,
		MasterAddr: rdzv.MasterAddr, MasterPort: rdzv.MasterPort,
		RunID: cfg.runID, StartMethod: cfg.startMethod,
		LogDir: logDir, Output: cfg.output,
		Options: launcher.Options{GracePeriod: cfg.grace},
		Notes:   stderr,
	}
	res, err := job.Run(c.Context)
	if err != nil {
		return err
	}
	host, _ := os.Hostname()
	sum := res.Summarize(host, cfg.runID)
	if !res.Succeeded() {
		sum.WriteText(stderr, filepath.Base(cfg.argv[len(cfg.argv)-len(c.Args().Tail())-1]))
	}
	if cfg.summaryJSON != "" {
		if err := writeSummary(cfg.summaryJSON, sum); err != nil {
			fmt.Fprintf(stderr, "mpspawn: %v\n", err)
		}
	}
	if code := res.ExitCode(); code != 0 {
		return exitCode(code)
	}
	return nil
}

func writeSummary(path string, sum *launcher.Summary) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("summary: %w", err)
	}
	if err := sum.WriteJSON(f); err != nil {
		f.Close()
		return fmt.Errorf("summary: %w", err)
	}
	return f.Close()
}
