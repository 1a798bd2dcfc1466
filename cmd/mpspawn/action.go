package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/urfave/cli/v2"
)

// action is the launcher's cli action: parse, then act. Nothing past
// parseConfig sees the *cli.Context.
func action(c *cli.Context) error {
	started := time.Now()
	cfg, err := parseConfig(c)
	if err != nil {
		return junitOnError(c.String(fJUnitXML), started, err, c.App.ErrWriter)
	}
	err = act(c.Context, cfg, newConsole(c.App.Writer, c.App.ErrWriter, cfg.diag.quiet))
	return junitOnError(cfg.junitXML, started, err, c.App.ErrWriter)
}

// junitOnError writes --junit-xml's report of an error that ended mpspawn
// before any rank's result (the job's own reports are written by report),
// and returns err.
func junitOnError(path string, started time.Time, err error, stderr io.Writer) error {
	var code exitCode
	if path == "" || err == nil || errors.As(err, &code) {
		return err
	}
	if werr := writeJUnit(path, junitError(explain(err), started)); werr != nil {
		fmt.Fprintf(stderr, "mpspawn: warning: %s\n", describe(werr))
	}
	return err
}

// console is where mpspawn writes: the plan and the ranks' output to
// stdout; warnings, errors and the summary to stderr; notes ("mpspawn:
// note: ...", status lines) to notes, which --quiet silences.
type console struct {
	stdout, stderr io.Writer
	notes          io.Writer
	// mixed takes the launcher's and the rendezvous' notices, notes and
	// warnings both, one line per Write: under --quiet only the warnings
	// and errors get through.
	mixed io.Writer
}

// newConsole is the console on stdout and stderr, quiet or not.
func newConsole(stdout, stderr io.Writer, quiet bool) console {
	if quiet {
		return console{stdout: stdout, stderr: stderr, notes: io.Discard, mixed: warningsOnly{stderr}}
	}
	return console{stdout: stdout, stderr: stderr, notes: stderr, mixed: stderr}
}

// notesWriter is where the parse phase writes its notes: stderr, or
// nowhere under --quiet.
func notesWriter(c *cli.Context) io.Writer {
	if c.Bool(fQuiet) {
		return io.Discard
	}
	return c.App.ErrWriter
}

// warningsOnly passes on the lines written to it that are warnings or
// errors ("mpspawn: warning: ...") and drops the others: --quiet for
// writers that take both, a line per Write, as job.Job.Notes and
// etcd.Config.Notes do.
type warningsOnly struct{ w io.Writer }

func (q warningsOnly) Write(b []byte) (int, error) {
	if bytes.HasPrefix(b, []byte("mpspawn: warning:")) || bytes.HasPrefix(b, []byte("mpspawn: error:")) {
		return q.w.Write(b)
	}
	return len(b), nil
}

// plan is a config settled on this machine: how the ranks start and where
// they go.
type plan struct {
	*config
	method launcher.StartMethod // started before placement; nil in a dry run
	place  *placement
	nproc  int
}

// act carries out cfg: it prints the stacks of a running job, prints the
// plan of a dry run, or launches the job. The errors it returns are the
// packages' typed errors and setupErrors, worded for people by explain.
func act(ctx context.Context, cfg *config, con console) error {
	if cfg.dumpStacks != 0 {
		return dumpStacks(ctx, cfg.dumpStacks, cfg.json, con.stdout)
	}
	if cfg.fanout != nil {
		return runFanout(ctx, cfg, con)
	}
	p := &plan{config: cfg}
	if !cfg.dryRun {
		// Before placement loads NVML: a forkserver, and every rank forked
		// from it, must inherit nothing of the launcher's GPU state, and its
		// preload overlaps with the rest of the set-up.
		m, err := launcher.NewStartMethod(cfg.startMethod, launcher.ForkserverConfig{
			Python: cfg.path, Preload: cfg.preload, Main: cfg.argv[1:], Stderr: con.stderr,
		})
		if err != nil {
			return err
		}
		defer m.Close()
		p.method = m
	}
	if err := p.placeRanks(con); err != nil {
		return err
	}
	if cfg.dryRun {
		return p.dryRun(con.stdout)
	}
	return p.launch(ctx, con)
}

// placeRanks places the ranks on this machine (or the --topology
// snapshot): the one check of the command line that needs the machine's
// GPUs, made after the forkserver started (see act) and before any rank.
func (p *plan) placeRanks(con console) error {
	var err error
	if p.place, err = placeRanks(p.nprocSpec, p.nprocArg, p.placeOpts, con); err != nil {
		return err
	}
	p.nproc = len(p.place.plan.Ranks)
	return p.checkFilter(p.nproc)
}
