package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/urfave/cli/v2"
)

// Diagnosis flags: what a job cost, and what it was doing when it hung.
const (
	fQuiet       = "quiet"
	fHangTimeout = "hang-timeout"
	fTimeout     = "timeout"
	fDumpStacks  = "dump-stacks"
)

func diagFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Category: catFailure, Name: fHangTimeout, Usage: "when no rank has written any output for `DURATION` (e.g. 5m), show every rank's stack (Python: every thread; Go: every goroutine) and stop the job as failed"},
		&cli.StringFlag{Category: catFailure, Name: fTimeout, Usage: "stop the job after `DURATION` (e.g. 2h), showing every rank's stack; exit code 124, as timeout(1)"},
		&cli.StringFlag{Category: catFailure, Name: fDumpStacks, Usage: "print the stacks of the Python ranks of the running mpspawn `PID`, without stopping them, and exit"},
		&cli.BoolFlag{Category: catFailure, Name: fQuiet, Aliases: []string{"q"}, Usage: "print no notes (mpspawn: note: ..., status lines), and on success not the line with the ranks' time, CPU and peak memory; warnings and errors still print"},
	}
}

// diagConfig is the validated diagnosis flags.
type diagConfig struct {
	quiet         bool
	hang, timeout time.Duration
}

func parseDiag(c *cli.Context) (diagConfig, error) {
	d := diagConfig{quiet: c.Bool(fQuiet)}
	var err error
	if d.hang, err = parseBound(c, fHangTimeout); err != nil {
		return d, err
	}
	if d.timeout, err = parseBound(c, fTimeout); err != nil {
		return d, err
	}
	return d, nil
}

// parseBound reads a positive duration flag (a Go duration, or seconds);
// 0 when it is not given.
func parseBound(c *cli.Context, name string) (time.Duration, error) {
	s := c.String(name)
	if s == "" {
		return 0, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		secs, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil {
			return 0, usagef("--%s %q: want a duration such as 5m, 90s or 2h", name, s)
		}
		d = time.Duration(secs * float64(time.Second))
	}
	if d <= 0 {
		return 0, usagef("--%s %q: want a positive duration", name, s)
	}
	return d, nil
}

// options sets the job's diagnosis options: the bounds, and the stack
// hook in every Python rank (so that --dump-stacks can see it), with its
// files in the scratch directory when there is one.
func (d diagConfig) options(o *launcher.Options, scratch string) {
	o.Watchdog.HangTimeout, o.Watchdog.Timeout, o.Watchdog.Stacks = d.hang, d.timeout, true
	if scratch != "" {
		o.Watchdog.StacksDir = filepath.Join(scratch, "stacks")
	}
}

// stoppedByWatchdog reports whether mpspawn stopped the job for a hang, a
// timeout or a GPU's XID error: the summary then says so as the root
// cause (with the stacks, for a hang or a timeout).
func stoppedByWatchdog(cause error) bool {
	var he *diag.HangError
	var te *diag.TimeoutError
	var xe *gpu.XIDError
	return errors.As(cause, &he) || errors.As(cause, &te) || errors.As(cause, &xe)
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

// parseDumpStacks reads mpspawn --dump-stacks PID [--json], which does
// nothing else.
func parseDumpStacks(c *cli.Context) (*config, error) {
	arg := c.String(fDumpStacks)
	pid, err := strconv.Atoi(arg)
	if err != nil || pid < 2 {
		return nil, usagef("--dump-stacks %q: want the process id of a running mpspawn", arg)
	}
	if c.NArg() > 0 {
		return nil, usagef("--dump-stacks %d takes no script (it looks at a job that runs already): drop %s", pid, c.Args().First())
	}
	return &config{dumpStacks: pid, json: c.Bool(fJSON)}, nil
}

// dumpStacks writes the stacks of the ranks of the running mpspawn pid to
// w, as JSON or as text; the ranks go on running.
func dumpStacks(ctx context.Context, pid int, asJSON bool, w io.Writer) error {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	stacks, err := diag.DumpStacks(ctx, pid)
	if err != nil {
		return &setupError{Step: fmt.Sprintf("--dump-stacks %d", pid), Err: err}
	}
	if asJSON {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(stacks)
	}
	var b strings.Builder
	for _, s := range stacks {
		fmt.Fprintf(&b, "[%d]: pid %d\n", s.Rank, s.Pid)
		if s.Stack.Note != "" {
			fmt.Fprintf(&b, "  note: %s\n", s.Stack.Note)
		}
		for _, l := range strings.Split(s.Stack.Text, "\n") {
			if l != "" {
				b.WriteString("    " + l + "\n")
			}
		}
	}
	_, err = io.WriteString(w, b.String())
	return err
}

// watchGPUs watches the job's GPUs for critical XID errors: the first one
// cancels the returned context with the *gpu.XIDError as its cause, which
// stops the ranks and becomes the job's root cause. Without GPUs it does
// nothing. Call unwatch once the job is over.
func (p *plan) watchGPUs(ctx context.Context, notes io.Writer) (_ context.Context, unwatch func()) {
	uuids := p.place.gpuUUIDs()
	if len(uuids) == 0 {
		return ctx, func() {}
	}
	ctx, cancel := context.WithCancelCause(ctx)
	w, err := gpu.WatchXIDs(uuids, func(e *gpu.XIDError) { cancel(e) })
	if err != nil {
		fmt.Fprintf(notes, "mpspawn: note: the GPUs are not watched for XID errors: %s\n", describe(err))
		return ctx, func() { cancel(nil) }
	}
	for _, warn := range w.Warnings {
		fmt.Fprintf(notes, "mpspawn: note: %s\n", warn)
	}
	return ctx, func() {
		w.Close()
		cancel(nil)
	}
}

// gpuUUIDs lists the UUIDs of the GPUs the ranks were placed on (a MIG
// device's GPU for a MIG device), each once.
func (p *placement) gpuUUIDs() []string {
	if p == nil || p.plan == nil || p.topo == nil {
		return nil
	}
	var out []string
	seen := map[int]bool{}
	for _, r := range p.plan.Ranks {
		for _, g := range r.GPUs() {
			if g >= 0 && g < len(p.topo.GPUs) && !seen[g] {
				seen[g] = true
				out = append(out, p.topo.GPUs[g].UUID)
			}
		}
	}
	return out
}

// addGPUMemory fills in each rank's peak GPU memory from NVML's accounting
// statistics, when the ranks ran on GPUs; notes say where it could not.
func (p *plan) addGPUMemory(res *launcher.Result, notes io.Writer) {
	uuids := p.place.gpuUUIDs()
	if len(uuids) == 0 || res == nil {
		return
	}
	pids := make([]int, len(res.Ranks))
	for i, r := range res.Ranks {
		pids[i] = r.Pid
	}
	peaks, warnings, err := gpu.PeakGPUMemory(uuids, pids)
	if err != nil {
		fmt.Fprintf(notes, "mpspawn: note: no per-rank GPU memory: %s\n", describe(err))
		return
	}
	for _, w := range warnings {
		fmt.Fprintf(notes, "mpspawn: note: %s\n", w)
	}
	for i := range res.Ranks {
		res.Ranks[i].Cost.GPUMemory = peaks[res.Ranks[i].Pid]
	}
}
