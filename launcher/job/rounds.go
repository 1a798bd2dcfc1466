package job

import (
	"context"
	"errors"
	"os"
	"os/signal"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// Attempt is one round of a job as this node ran it.
type Attempt struct {
	Round  rendezvous.Round
	Result *launcher.Result
	// RootCause is the round's root cause, wherever it was (the first
	// failure published by any node); nil when the round succeeded or
	// stopped for a change of membership (then Change says which).
	RootCause *rendezvous.Failure
	Change    string
	// Unconfirmed is set when this node's ranks succeeded but it could
	// not confirm that the job did (every node done, the run closed as
	// succeeded): the job then fails on this node.
	Unconfirmed *rendezvous.UnconfirmedError
}

// Outcome is how a job run round after round (RunRounds) ended on this
// node. Attempts is in order; the last is the job's end.
type Outcome struct {
	Attempts []Attempt
	// Err is the rendezvous error that ended the job between rounds (a
	// join timeout, a run closed by another node), or nil.
	Err error
	// Interrupted is the signal that ended the wait for a round, or nil.
	Interrupted os.Signal
}

// Last is the last attempt, or nil when none ran.
func (o *Outcome) Last() *Attempt {
	if len(o.Attempts) == 0 {
		return nil
	}
	return &o.Attempts[len(o.Attempts)-1]
}

// ExitCode is the job's exit code on this node: the last attempt's root
// cause's code wherever it failed (so every node exits with it), 128+signal
// when this launcher was interrupted, 1 when the round was stopped by
// another node for no failure of its own (the run closed) or the job's
// success could not be confirmed, 0 when it succeeded and this node
// confirmed so.
func (o *Outcome) ExitCode() int {
	a := o.Last()
	if s, ok := o.Interrupted.(syscall.Signal); ok {
		return 128 + int(s)
	}
	switch {
	case a == nil:
		return 1
	case a.Result.Interrupted != nil:
		return a.Result.ExitCode()
	case a.RootCause != nil:
		return a.RootCause.ExitCode
	case o.Err != nil || a.Unconfirmed != nil || a.Change != "":
		return max(a.Result.ExitCode(), 1)
	}
	return a.Result.ExitCode()
}

// RunRounds runs the job through rdzv: for each round it takes the
// membership from rdzv.Next, starts the ranks (Run), publishes the first
// local failure to the other nodes at once, and stops the ranks the moment
// rdzv says the round is over elsewhere. A round that failed is run again
// while the job has restarts left (the count is the rendezvous's, the same
// on every node); a change of membership runs it again without spending
// one. The run is closed (rdzv.End) when the job is over.
//
// The error is about starting the ranks, as Run's; how the rounds ended is
// in the Outcome.
func (j *Job) RunRounds(ctx context.Context, rdzv rendezvous.Rendezvous, maxRestarts int) (*Outcome, error) {
	out := &Outcome{}
	for {
		round, sig, err := next(ctx, rdzv)
		if err != nil || sig != nil {
			out.Err, out.Interrupted = err, sig
			return out, nil
		}
		if len(out.Attempts) > 0 && j.Output != nil {
			j.Output = j.Output.Reopen() // the last round's is closed
		}
		a, err := j.runRound(ctx, rdzv, round, maxRestarts)
		if err != nil {
			return out, err
		}
		out.Attempts = append(out.Attempts, a)
		switch {
		case a.Result.Interrupted != nil || ctx.Err() != nil:
			j.end(ctx, rdzv, "failed")
			return out, nil
		case a.Change == rendezvous.ReasonClosed:
			return out, nil // closed by another node: nothing to start
		case a.Unconfirmed != nil:
			return out, nil // the others may yet confirm theirs: the run stays open
		case a.RootCause == nil && a.Change != "":
			j.note("rendezvous: %s: starting a new round (no restart spent)", a.Change)
			continue
		case a.RootCause == nil && a.Unconfirmed == nil:
			if err := j.end(ctx, rdzv, "succeeded"); err != nil {
				out.Attempts[len(out.Attempts)-1].Unconfirmed = err
			}
			return out, nil
		case round.Restart < maxRestarts:
			j.note("%s; restarting the ranks (restart %d of %d)", a.RootCause, round.Restart+1, maxRestarts)
			continue
		}
		j.end(ctx, rdzv, "failed")
		return out, nil
	}
}

// runRound runs one round's ranks and says how the round ended.
func (j *Job) runRound(ctx context.Context, rdzv rendezvous.Rendezvous, round rendezvous.Round, maxRestarts int) (Attempt, error) {
	j.Membership, j.Attempt, j.MaxRestarts = round.Membership, round.Restart, maxRestarts
	rctx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	pub := &publisher{ctx: ctx, rdzv: rdzv, job: j}
	j.Options.Stop.OnRootCause, j.Options.Watchdog.OnCause = pub.publish, pub.publishCause
	stopped := make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		select {
		case s := <-rdzv.Stopped():
			cancel(stopCause(s))
		case <-stopped:
		}
	})
	res, err := j.Run(rctx)
	close(stopped)
	wg.Wait()
	first := pub.wait()
	if err != nil {
		return Attempt{}, err
	}
	j.AddStderr(res)
	a := Attempt{Round: round, Result: res}
	var se *rendezvous.StopError
	switch {
	case res.Interrupted != nil:
		f := j.failure(nil)
		if s, ok := res.Interrupted.(syscall.Signal); ok {
			f.ExitCode, f.Message = 128+int(s), "mpspawn interrupted by "+launcher.SignalName(s)
		}
		fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), publishTimeout)
		if first, err := rdzv.Fail(fctx, f); err == nil {
			f = first
		}
		cancel()
		a.RootCause = &f
	case res.RootCause >= 0:
		a.RootCause = first
	case errors.As(res.Cause, &se) && se.Stop.Failure != nil:
		a.RootCause = se.Stop.Failure
	case errors.As(res.Cause, &se):
		a.Change = se.Stop.Reason
	case diag.Reason(res.Cause) != "": // a hang, a timeout: a failure, as a rank's
		a.RootCause = pub.settle(res.Cause)
	case res.Succeeded():
		a.RootCause, a.Change, a.Unconfirmed = finish(ctx, rdzv)
	}
	return a, nil
}

// finish tells the rendezvous that this node's ranks succeeded, and says
// how the round ended: with a failure elsewhere, a run closed elsewhere,
// or unconfirmed.
func finish(ctx context.Context, rdzv rendezvous.Rendezvous) (*rendezvous.Failure, string, *rendezvous.UnconfirmedError) {
	s, err := rdzv.Finish(ctx)
	var ue *rendezvous.UnconfirmedError
	switch {
	case errors.As(err, &ue):
		return nil, "", ue
	case err != nil: // interrupted: the caller sees ctx
		return nil, "", &rendezvous.UnconfirmedError{What: "that the other nodes succeeded", Err: err}
	case s != nil && s.Failure != nil:
		return s.Failure, "", nil
	case s != nil:
		return nil, s.Reason, nil
	}
	return nil, "", nil
}

// end closes the run; closing it as succeeded gives an
// *rendezvous.UnconfirmedError when that could not be confirmed.
func (j *Job) end(ctx context.Context, rdzv rendezvous.Rendezvous, status string) *rendezvous.UnconfirmedError {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	err := rdzv.End(ctx, status)
	var ue *rendezvous.UnconfirmedError
	switch {
	case errors.As(err, &ue):
		return ue
	case err != nil && status == "succeeded":
		return &rendezvous.UnconfirmedError{What: "that the run closed as succeeded", Err: err}
	case err != nil:
		j.note("warning: %v", err)
	}
	return nil
}

// publisher tells the other nodes of the round's first local failure, from
// the supervisor's callback, without blocking it.
type publisher struct {
	ctx  context.Context
	rdzv rendezvous.Rendezvous
	job  *Job
	wg   sync.WaitGroup
	mu   sync.Mutex
	res  *rendezvous.Failure
}

func (p *publisher) publish(r launcher.RankResult) {
	p.send(p.job.failure(&r))
}

// wait waits for the publication and returns the round's first failure as
// the rendezvous has it (nil when nothing was published).
func (p *publisher) wait() *rendezvous.Failure {
	p.wg.Wait()
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.res
}

// failure is the detail of a local rank's failure for the other nodes, or
// of this node's own end when r is nil.
func (j *Job) failure(r *launcher.RankResult) rendezvous.Failure {
	f := rendezvous.Failure{NodeRank: j.NodeRank, Rank: -1, LocalRank: -1, Time: time.Now()}
	f.Host, _ = os.Hostname()
	if r == nil {
		return f
	}
	f.Rank, f.LocalRank, f.Pid, f.ExitCode, f.Signal = r.Rank, r.LocalRank, r.Pid, r.Code(), int(r.Signal)
	if !r.Ended.IsZero() {
		f.Time = r.Ended
	}
	if ef, _ := launcher.ReadErrorFile(r.ErrorFilePath); ef != nil {
		f.Message = ef.Message
	} else if r.LocalRank >= 0 && r.LocalRank < len(j.tails) {
		if lines := stderrExcerpt(j.tails[r.LocalRank].String()); len(lines) > 0 {
			f.Message = lines[len(lines)-1]
		}
	}
	f.Message = strings.TrimSpace(f.Message)
	return f
}

// next waits for the next round. A signal that would stop the ranks
// (ForwardedSignals, not PassedSignals) ends the wait, and is returned.
func next(ctx context.Context, rdzv rendezvous.Rendezvous) (rendezvous.Round, os.Signal, error) {
	sigc := make(chan os.Signal, 1)
	var stops []os.Signal
	for _, s := range launcher.ForwardedSignals() {
		if !slices.Contains(launcher.PassedSignals(), s) {
			stops = append(stops, s)
		}
	}
	signal.Notify(sigc, stops...)
	defer signal.Stop(sigc)
	nctx, cancel := context.WithCancel(ctx)
	defer cancel()
	type reply struct {
		r   rendezvous.Round
		err error
	}
	done := make(chan reply, 1)
	go func() {
		r, err := rdzv.Next(nctx)
		done <- reply{r, err}
	}()
	select {
	case r := <-done:
		return r.r, nil, r.err
	case sig := <-sigc:
		cancel()
		<-done
		return rendezvous.Round{}, sig, nil
	}
}
