package job

import (
	"context"
	"errors"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/diag"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// A hang or a timeout found on one node stops every node of the job: the
// node whose watchdog fired publishes it through the rendezvous as the
// round's failure (rendezvous.Failure.Cause, rank -1), as it would a
// rank's; every other node, stopped by it, takes its own ranks' stacks
// before it stops them. The hang is judged per node: the watchdog sees
// the output of this node's ranks only.

// stopCause is the cause the Group's context is cancelled with when the
// rendezvous stops the round: a launcher.StacksFirst when another node's
// launcher stopped it for a hang or a timeout it found itself, so that
// this node's ranks' stacks are taken too.
func stopCause(s rendezvous.Stop) error {
	var err error = &rendezvous.StopError{Stop: s}
	if s.Failure != nil && s.Failure.Cause != "" {
		return &launcher.StacksFirst{Err: err}
	}
	return err
}

// causeExitCode is the exit code of a job the launcher stopped for cause:
// diag.TimeoutExitCode for a timeout, 1 otherwise.
func causeExitCode(cause error) int {
	var te *diag.TimeoutError
	if errors.As(cause, &te) {
		return diag.TimeoutExitCode
	}
	return 1
}

// causeFailure is the detail, for the other nodes, of this node's stop
// for a cause the launcher found (a hang, a timeout, a GPU's XID error).
func (j *Job) causeFailure(cause error) rendezvous.Failure {
	f := j.failure(nil)
	f.Cause, f.ExitCode = diag.Reason(cause), causeExitCode(cause)
	return f
}

// publishCause tells the other nodes that this node stops its ranks for
// cause, from the supervisor's callback, without blocking it.
func (p *publisher) publishCause(cause error) {
	p.send(p.job.causeFailure(cause))
}

// settle returns the round's first failure, after publishing this node's
// stop for cause when nothing was published yet (a cause that came
// through the context, such as a GPU's XID error).
func (p *publisher) settle(cause error) *rendezvous.Failure {
	if first := p.wait(); first != nil {
		return first
	}
	p.send(p.job.causeFailure(cause))
	return p.wait()
}

// publishTimeout bounds telling the other nodes of a failure: etcd may be
// unreachable, and the node's own exit must not wait for it.
const publishTimeout = 10 * time.Second

// send publishes f in the background; wait gives the round's first
// failure as the rendezvous has it.
func (p *publisher) send(f rendezvous.Failure) {
	p.wg.Go(func() {
		ctx, cancel := context.WithTimeout(context.WithoutCancel(p.ctx), publishTimeout)
		defer cancel()
		first, err := p.rdzv.Fail(ctx, f)
		if err != nil {
			p.job.note("warning: could not tell the other nodes of the failure: %v", err)
			first = f
		}
		p.mu.Lock()
		p.res = &first
		p.mu.Unlock()
	})
}
