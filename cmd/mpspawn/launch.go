package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/urfave/cli/v2"
)

// launch runs a validated job and turns its result into an exit code,
// after every rank has been reaped.
func launch(c *cli.Context, cfg *config) error {
	stderr := c.App.ErrWriter
	rdzv, err := rendezvous.Static(cfg.rdzv) // validated by parseConfig
	if err != nil {
		return err
	}
	defer rdzv.Close()
	logDir, scratch := cfg.logDir, ""
	switch {
	case logDir == "" && cfg.keepLogDir: // files asked for, no --log-dir
		if logDir, err = os.MkdirTemp("", "mpspawn_"); err != nil {
			return fmt.Errorf("log dir: %w", err)
		}
		fmt.Fprintf(stderr, "mpspawn: log files go to %s\n", logDir)
	case logDir == "": // only error files, removed at the end
		if scratch, err = os.MkdirTemp("", "mpspawn_"); err != nil {
			return fmt.Errorf("scratch dir: %w", err)
		}
		_ = launcher.RemoveOnDeath(scratch) // by the guard, if mpspawn is SIGKILLed
	}
	if err := launcher.CgroupError(); err != nil {
		fmt.Fprintf(stderr, "mpspawn: note: no cgroups (%v): the ranks' process groups are stopped and what the ranks leave behind is swept at the end, but a daemon that leaves its process group outlives a SIGKILLed mpspawn\n", err)
	}
	cfg.output.Stdout, cfg.output.Stderr = c.App.Writer, stderr
	job := cfg.job(rdzv.Membership)
	job.LogDir, job.ScratchDir, job.Output, job.Notes = logDir, scratch, cfg.output, stderr
	res, err := job.Run(c.Context)
	if scratch != "" {
		defer removeScratch(job, scratch)
	}
	if stalled := cfg.output.Stalled(); slices.Contains(stalled, "stderr") {
		stderr = io.Discard // nobody reads it: writing the summary there would hang
	} else if len(stalled) > 0 {
		fmt.Fprintf(stderr, "mpspawn: warning: nobody is reading stdout; gave up on it after waiting, so the ranks' last lines there are lost\n")
	}
	var pe *launcher.PreloadError
	switch {
	case errors.As(err, &pe):
		return usagef("--preload %s: %s", pe.Module, pe.Err)
	case err != nil:
		return err
	}
	if res.RootCause < 0 && res.Interrupted == nil && res.Cause != nil {
		fmt.Fprintf(stderr, "mpspawn: error: %v\n", res.Cause) // not a rank's failure: the summary would not say why
	}
	host, _ := os.Hostname()
	sum := res.Summarize(host, cfg.runID)
	if !res.Succeeded() {
		sum.WriteText(stderr, filepath.Base(cfg.argv[len(cfg.argv)-len(c.Args().Tail())-1]))
	}
	if cfg.summaryJSON != "" {
		if err := writeSummary(cfg.summaryJSON, sum); err != nil {
			fmt.Fprintf(stderr, "mpspawn: warning: %v\n", err)
		}
	}
	if code := res.ExitCode(); code != 0 {
		return exitCode(code)
	}
	return nil
}

// job is the launcher job cfg describes, with its placement, before log
// files are chosen.
func (cfg *config) job(m rendezvous.Membership) *launcher.Job {
	return &launcher.Job{
		Path: cfg.path, Command: cfg.argv, Env: os.Environ(),
		Membership: m, RunID: cfg.runID, Ranks: cfg.place.setup,
		Options: launcher.Options{GracePeriod: cfg.grace, Method: cfg.method},
		IPC:     cfg.ipc,
	}
}

func writeSummary(path string, sum *launcher.Summary) error {
	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("summary %s: %w", path, err)
	}
	err = sum.WriteJSON(f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		// A partial summary (a full disk) would read as a broken job.
		if st, serr := os.Stat(path); serr == nil && st.Mode().IsRegular() {
			_ = os.Remove(path)
		}
		return fmt.Errorf("summary %s not written: %w", path, err)
	}
	return nil
}

// removeScratch removes the error files and the scratch directory; only
// if a rank left something else there does it walk the tree.
func removeScratch(job *launcher.Job, dir string) {
	for lr := range job.NProcPerNode {
		_ = os.Remove(job.ErrorFile(lr))
	}
	if os.Remove(dir) != nil {
		_ = os.RemoveAll(dir)
	}
}
