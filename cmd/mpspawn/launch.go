package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/job"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// launch runs the job and turns its result into an exit code, after every
// rank has been reaped.
func (p *plan) launch(ctx context.Context, con console) error {
	if err := checkSummary(p.summaryJSON); err != nil {
		return err
	}
	if p.interp != nil && p.interp.Noted() {
		fmt.Fprintf(con.notes, "mpspawn: note: python: %s\n", p.interp)
	}
	// A forkserver's preload first, with signals' default actions (see
	// Job.Run): Ctrl-C during it ends mpspawn, and the server with it.
	if err := p.method.Ready(ctx); err != nil {
		return err
	}
	rdzv, err := p.openRendezvous(ctx, con)
	if err != nil {
		return err
	}
	defer rdzv.Close()
	logDir, scratch, err := p.logDirs(con.notes)
	if err != nil {
		return err
	}
	if err := launcher.CgroupError(); err != nil {
		fmt.Fprintf(con.notes, "mpspawn: note: no cgroups (%v): the ranks' process groups are stopped and what the ranks leave behind is swept at the end, but a daemon that leaves its process group outlives a SIGKILLed mpspawn\n", err)
	}
	job := p.job(rendezvous.Membership{NProcPerNode: p.nproc})
	job.LogDir, job.ScratchDir, job.Output, job.Notes = logDir, scratch, p.newOutput(con), con.mixed
	p.diag.options(&job.Options, scratch)
	unpublish := p.publishLive(ctx, job, con.notes, rdzv)
	defer unpublish()
	stopNotes := noteStops(con.stderr, job.NProcPerNode, p.grace)
	ctx, unwatch := p.watchGPUs(ctx, con.notes)
	out, err := job.RunRounds(ctx, rdzv, p.multi.maxRestarts)
	unwatch()
	stopNotes()
	if scratch != "" {
		defer removeScratch(job, scratch)
	}
	stalled := job.Output.Stalled()
	if slices.Contains(stalled, "stderr") {
		// Nobody reads it: writing the summary there would hang.
		con.stderr, con.notes, con.mixed = io.Discard, io.Discard, io.Discard
	}
	if slices.Contains(stalled, "stdout") {
		con.stdout = io.Discard // nor --summary-json -
		fmt.Fprintf(con.stderr, "mpspawn: warning: nobody is reading stdout; gave up on it after waiting, so the ranks' last lines there are lost\n")
	}
	if err != nil {
		return err
	}
	return p.finish(con, out, scratch != "")
}

// finish reports how the job ended and returns its exit code.
func (p *plan) finish(con console, out *job.Outcome, scratch bool) error {
	stderr := con.stderr
	if out.Last() == nil && out.Interrupted != nil {
		name := out.Interrupted.String()
		if s, ok := out.Interrupted.(syscall.Signal); ok {
			name = launcher.SignalName(s)
		}
		fmt.Fprintf(stderr, "mpspawn: %s while waiting for the rendezvous: no rank started\n", name)
		if p.junitXML != "" {
			msg := fmt.Sprintf("mpspawn got %s while waiting for the rendezvous: no rank started", name)
			if err := writeJUnit(p.junitXML, junitError(msg, p.started)); err != nil {
				fmt.Fprintf(stderr, "mpspawn: warning: %s\n", describe(err))
			}
		}
		return exitCode(out.ExitCode())
	}
	if out.Last() == nil { // no round started: nothing ran
		if out.Err == nil {
			return errors.New("mpspawn: no round of the job started")
		}
		return out.Err
	}
	res := out.Last().Result
	p.addGPUMemory(res, con.notes)
	if out.Err != nil {
		fmt.Fprintf(stderr, "mpspawn: error: %s\n", explain(out.Err))
	} else if line := verdictLine(out.Last()); line != "" {
		fmt.Fprintf(stderr, "mpspawn: error: %s\n", line)
	} else if res.RootCause < 0 && res.Interrupted == nil && res.Cause != nil && !stoppedByWatchdog(res.Cause) {
		fmt.Fprintf(stderr, "mpspawn: error: %s\n", stopCause(res.Cause)) // not a rank's failure: the summary would not say why
	}
	p.report(con, out, scratch)
	if code := out.ExitCode(); code != 0 {
		return exitCode(code)
	}
	return nil
}

// newOutput is the launcher's output for the job, on the console con.
func (p *plan) newOutput(con console) *launcher.Output {
	o := p.output
	return &launcher.Output{Stdout: con.stdout, Stderr: con.stderr, Prefix: o.prefix, Timestamps: o.timestamps,
		Filter: o.filter, Redirects: o.redirects, Tee: o.tee}
}

// logDirs makes the directories of the ranks' files: --log-dir's, a
// temporary one kept when files are asked for without it, or else a scratch
// directory for the error files alone, removed at the end.
func (p *plan) logDirs(notes io.Writer) (logDir, scratch string, err error) {
	switch {
	case p.logDir != "":
		// Here, not in the launcher, so that the message names the flag.
		if err := makeRunDir(p.logDir, p.runID); err != nil {
			return "", "", &setupError{Step: "--log-dir " + p.logDirArg, Err: err}
		}
		return p.logDir, "", nil
	case p.keepLogDir: // files asked for, no --log-dir
		if logDir, err = os.MkdirTemp("", "mpspawn_"); err != nil {
			return "", "", &setupError{Step: "no directory for the log files", Err: err, Hint: " (set TMPDIR, or give --log-dir)"}
		}
		fmt.Fprintf(notes, "mpspawn: log files go to %s\n", logDir)
		return logDir, "", nil
	}
	// Removed by the guard if mpspawn is SIGKILLed, even while it is made.
	if scratch, err = launcher.MkdirTemp("", "mpspawn_"); err != nil {
		return "", "", &setupError{Step: "no directory for the ranks' error files", Err: err, Hint: " (set TMPDIR, or give --log-dir)"}
	}
	return "", scratch, nil
}

// report writes the summary of a finished job: on stderr when it failed,
// to --summary-json, and the root cause's error to the launcher's own
// TORCHELASTIC_ERROR_FILE, as torchrun does. When the ranks' error files
// are removed at exit (scratch), no summary names them.
func (p *plan) report(con console, out *job.Outcome, scratch bool) {
	stderr := con.stderr
	res := out.Last().Result
	if scratch {
		for i := range res.Ranks {
			res.Ranks[i].ErrorFilePath = ""
		}
	}
	if path := os.Getenv("TORCHELASTIC_ERROR_FILE"); path != "" && res.RootCause >= 0 {
		rc := &res.Ranks[res.RootCause]
		if err := job.WriteRootCause(path, rc); err != nil {
			fmt.Fprintf(stderr, "mpspawn: warning: TORCHELASTIC_ERROR_FILE: %s\n", describe(err))
		} else if rc.ErrorFilePath == "" && rc.ErrorFile != nil {
			rc.ErrorFilePath = path // the copy outlives the scratch directory
		}
	}
	host, _ := os.Hostname()
	sum := out.Summarize(host, p.runID)
	if p.interp != nil {
		sum.Interpreter = p.interp.String()
	}
	if p.sshNonce != "" { // the driver prints the job's root cause, once
		if err := writeSummaryLine(stderr, p.sshNonce, sum); err != nil {
			fmt.Fprintf(stderr, "mpspawn: warning: summary to the driver: %v\n", err)
		}
	} else if sum.Status != "succeeded" && sum.Status != "unconfirmed" {
		sum.WriteText(stderr, p.script)
		p.importHint(stderr, sum)
	}
	p.ciReports(con, sum)
	p.diag.reportSuccess(stderr, res)
	if p.summaryJSON == "-" {
		if err := sum.WriteJSON(con.stdout); err != nil {
			fmt.Fprintf(stderr, "mpspawn: warning: summary to stdout: %v\n", err)
		}
	} else if p.summaryJSON != "" {
		if err := writeSummary(p.summaryJSON, p.logDir, sum); err != nil {
			fmt.Fprintf(stderr, "mpspawn: warning: %v\n", err)
		}
	}
}

// noteStops says, once, that mpspawn got a signal and is stopping the ranks
// (the launcher forwards it), and how long that may take; a second Ctrl-C
// kills them at once. The returned function stops listening.
func noteStops(w io.Writer, ranks int, grace time.Duration) (stop func()) {
	sigc := make(chan os.Signal, 2)
	signal.Notify(sigc, launcher.ForwardedSignals()...)
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		sigints := 0
		for {
			select {
			case sig := <-sigc:
				s, _ := sig.(syscall.Signal)
				switch {
				case s == syscall.SIGINT && sigints > 0:
					fmt.Fprintf(w, "mpspawn: SIGINT again: killing the ranks now (SIGKILL)\n")
					return
				case s == syscall.SIGINT:
					sigints++
					fmt.Fprintf(w, "mpspawn: SIGINT: stopping %d ranks, up to %v (Ctrl-C again to kill now)\n", ranks, grace)
				case slices.Contains(launcher.PassedSignals(), sig):
					fmt.Fprintf(w, "mpspawn: %s: passed to the %d ranks; the job goes on\n", launcher.SignalName(s), ranks)
				default:
					fmt.Fprintf(w, "mpspawn: %s: stopping %d ranks, up to %v\n", launcher.SignalName(s), ranks, grace)
					return
				}
			case <-done:
				return
			}
		}
	})
	return func() {
		signal.Stop(sigc)
		close(done)
		wg.Wait()
	}
}

// job is the launcher job p describes, with its placement, before log
// files are chosen.
func (p *plan) job(m rendezvous.Membership) *job.Job {
	return &job.Job{
		Path: p.path, Command: p.argv, Env: os.Environ(),
		Membership: m, RunID: p.runID, Role: p.role, Ranks: p.place.setup,
		Options: launcher.Options{Method: p.method, Stop: launcher.StopOptions{GracePeriod: p.grace}},
		IPC:     p.ipc,
	}
}

// removeScratch removes the error files and the scratch directory; only
// if a rank left something else there does it walk the tree.
func removeScratch(job *job.Job, dir string) {
	for lr := range job.NProcPerNode {
		_ = os.Remove(job.ErrorFile(lr))
	}
	if os.Remove(dir) != nil {
		_ = os.RemoveAll(dir)
	}
}

// ciReports writes what CI systems read of a finished job: --junit-xml's
// report, and under GitHub Actions the root cause as an annotation on
// stdout and the table of ranks in the step summary.
func (p *plan) ciReports(con console, sum *job.Summary) {
	if p.junitXML != "" {
		if err := writeJUnit(p.junitXML, junitReport(sum, p.started)); err != nil {
			fmt.Fprintf(con.stderr, "mpspawn: warning: %s\n", describe(err))
		}
	}
	if !githubActions(os.Getenv) {
		return
	}
	writeGitHubAnnotation(con.stdout, sum, githubRoot(os.Getenv))
	if path := os.Getenv("GITHUB_STEP_SUMMARY"); path != "" {
		if err := writeStepSummary(path, sum); err != nil {
			fmt.Fprintf(con.stderr, "mpspawn: warning: %s\n", describe(err))
		}
	}
}

// importHint follows the summary of a job whose root cause could not
// import a module: the other interpreters on this machine that can, with
// the flag that picks one.
func (p *plan) importHint(stderr io.Writer, sum *job.Summary) {
	rc := sum.RootCause
	if rc == nil || p.interp == nil {
		return
	}
	text := rc.Stderr
	if rc.Error != nil {
		text = rc.Error.Message + "\n" + rc.Error.Traceback + "\n" + text
	}
	module := missingModule(text)
	if module == "" {
		return
	}
	others := interpretersWith(context.Background(), module, p.interp.Path, os.Getenv)
	if len(others) == 0 {
		fmt.Fprintf(stderr, "mpspawn: hint: the ranks ran %s, which cannot import %s, and no other interpreter found on this machine can: install it there, or name the Python that has it with --python PATH\n", p.interp, module)
		return
	}
	fmt.Fprintf(stderr, "mpspawn: hint: the ranks ran %s, which cannot import %s; %s can: use --python %s\n",
		p.interp, module, strings.Join(others, ", "), others[0])
}
