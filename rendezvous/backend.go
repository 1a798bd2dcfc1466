package rendezvous

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// Rendezvous is how one node learns, round after round, who is in the
// job, and how the nodes tell each other that a round is over. Static
// membership (a *Job from Static) and the etcd v3 rendezvous (package rendezvous/etcd) both
// implement it; the launcher runs every job through it.
//
// A round is one start of the ranks on every node. The launcher calls Next
// for each round; while the round's ranks run it publishes a local failure
// with Fail and watches Stopped for the round's end decided elsewhere; when
// its ranks all succeeded it calls Finish; when the job is over it calls
// End, then Close.
type Rendezvous interface {
	// Next waits for the next round and returns it. The first call gives
	// round 0. A closed run gives an error wrapping ErrClosed.
	Next(ctx context.Context) (Round, error)
	// Fail publishes a failure on this node in the current round. The
	// first failure published in a round, anywhere, is its root cause;
	// Fail returns that one (f itself when it was first).
	Fail(ctx context.Context, f Failure) (Failure, error)
	// Stopped returns a channel that receives once when the current round
	// must stop for a reason found elsewhere: another node's failure, a
	// node lost, a node waiting to join. It never receives for a Static
	// job.
	Stopped() <-chan Stop
	// Finish says that this node's ranks all succeeded in the current
	// round, and waits, bounded, for the other nodes to finish too. It
	// returns nil when they did, the Stop that ended the round otherwise,
	// or an *UnconfirmedError when it could not learn how the round ended
	// (the wait's bound spent, the rendezvous lost).
	Finish(ctx context.Context) (*Stop, error)
	// End closes the run for good (status is "succeeded" or "failed"): a
	// node that arrives later gets ErrClosed from Next. Ending a run as
	// "succeeded" that could not be closed so, or that another node
	// closed as failed, is an *UnconfirmedError.
	End(ctx context.Context, status string) error
	// Close releases what the rendezvous holds (a port reservation, an
	// etcd lease and connection). It is safe to call more than once.
	Close() error
}

var _ Rendezvous = (*Job)(nil)

// ReasonClosed is a Stop's Reason when another node closed the run under
// a round that had no failure (it was interrupted, say).
const ReasonClosed = "the run was closed"

// ErrClosed is wrapped by Next's error when the run has ended.
var ErrClosed = errors.New("rendezvous: run closed")

// UnconfirmedError is a job whose result this node could not confirm:
// its ranks succeeded, but it could not learn that every other node's
// did too and that the run closed as succeeded. A node exits 0 only
// with that confirmation, so this is a failure of the job on this node.
type UnconfirmedError struct {
	What string // what could not be confirmed, and why: "the other nodes' result: etcd lost"
	Err  error  // the rendezvous error behind it, or nil
}

func (e *UnconfirmedError) Error() string {
	if e.Err != nil {
		return fmt.Sprintf("rendezvous: could not confirm %s: %v", e.What, e.Err)
	}
	return "rendezvous: could not confirm " + e.What
}

func (e *UnconfirmedError) Unwrap() error { return e.Err }

// Round is one round of a job: the membership of its ranks and how many
// restarts the job has spent before it (TORCHELASTIC_RESTART_COUNT, the
// same on every node).
type Round struct {
	Membership
	Number  int    // the round's number, from 0; elastic changes count too
	Restart int    // restarts spent before this round
	Hosts   []Node // every node of the round, by node rank (etcd: on node 0 and the coordinator only, nil elsewhere)
}

// Node is one node of a round, as it joined.
type Node struct {
	ID    string `json:"id"`    // unique per launcher process: ADDR/PID
	Addr  string `json:"addr"`  // --local-addr: how the other nodes reach it
	Host  string `json:"host"`  // its host name
	NProc int    `json:"nproc"` // its ranks
	Port  int    `json:"port"`  // the master port it reserved, used if it is node 0
	// Position is the node's place in the job's order of node ranks,
	// counted from 1 (its line of the host list a driver started it
	// from); 0: none. The etcd rendezvous orders nodes by position,
	// those with none after, each by ID.
	Position int `json:"position,omitempty"`
}

// Failure is the detail of a failure that ends a round on every node: a
// rank that failed, or a node that was lost.
type Failure struct {
	NodeRank  int       `json:"node_rank"`
	Host      string    `json:"host"`
	Addr      string    `json:"addr"`
	Rank      int       `json:"rank"` // -1 when the node was lost
	LocalRank int       `json:"local_rank"`
	Pid       int       `json:"pid"`
	ExitCode  int       `json:"exit_code"`        // the process-style code: the status, or 128+signal
	Signal    int       `json:"signal,omitempty"` // the signal that killed the rank, or 0
	Message   string    `json:"message,omitempty"`
	Time      time.Time `json:"time"`
	// Cause is set when the node's launcher itself stopped its ranks for
	// a cause it found rather than a rank's failure: "hang: no output for
	// 2s", "timeout: the job ran for 10m0s" (Rank is then -1). The other
	// nodes take their own ranks' stacks before they stop them.
	Cause string `json:"cause,omitempty"`
	// Lost is set when the node itself was lost (its lease expired: its
	// launcher died or was cut off from etcd). With NodeRank -1 it is the
	// etcd server that was lost, hosted by a node of the job (c10d); such
	// a Failure is never published (there is nowhere to).
	Lost bool `json:"lost,omitempty"`
}

// LostExitCode is the exit code of a round whose root cause is a lost
// node: there is no rank's code to pass on.
const LostExitCode = 1

func (f Failure) String() string {
	if f.Lost && f.NodeRank < 0 {
		return "lost etcd: " + f.Message
	}
	if f.Lost {
		return fmt.Sprintf("node %d (%s) lost: %s", f.NodeRank, f.Addr, f.Message)
	}
	if f.Cause != "" {
		return fmt.Sprintf("%s on node %d (%s)", f.Cause, f.NodeRank, f.Host)
	}
	return fmt.Sprintf("rank %d on node %d (%s) failed with exit code %d", f.Rank, f.NodeRank, f.Host, f.ExitCode)
}

// Stop is why a round ended elsewhere: a Failure (spending a restart), or
// a change of membership (Failure nil, Reason says which).
type Stop struct {
	Failure *Failure
	Reason  string
}

// StopError is the cause the launcher records when it stops its ranks for
// a Stop from another node.
type StopError struct{ Stop Stop }

func (e *StopError) Error() string {
	if e.Stop.Failure != nil {
		return "rendezvous: stopped: " + e.Stop.Failure.String()
	}
	return "rendezvous: stopped: " + e.Stop.Reason
}

// Next returns the job's static membership: round 0 on the first call, and
// the next restart on each later one (a single node restarts on its own).
func (j *Job) Next(ctx context.Context) (Round, error) {
	j.mu.Lock()
	defer j.mu.Unlock()
	r := Round{Membership: j.Membership, Number: j.rounds, Restart: j.rounds}
	j.rounds++
	return r, nil
}

// Fail returns f: a static job has no other node to tell.
func (j *Job) Fail(ctx context.Context, f Failure) (Failure, error) { return f, nil }

// Stopped returns nil: no other node ends a static job's round.
func (j *Job) Stopped() <-chan Stop { return nil }

// Finish returns at once: a static job does not wait for other nodes.
func (j *Job) Finish(ctx context.Context) (*Stop, error) { return nil, nil }

// End does nothing for a static job.
func (j *Job) End(ctx context.Context, status string) error { return nil }
