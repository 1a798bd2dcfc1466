package job

import (
	"fmt"
	"strings"
	"syscall"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// AttemptSummary is one round of a job in its Summary.
type AttemptSummary struct {
	Round     int          `json:"round"`
	Restart   int          `json:"restart"` // TORCHELASTIC_RESTART_COUNT of the round
	Nodes     int          `json:"nodes"`
	RootCause *RankSummary `json:"root_cause,omitempty"`
	Change    string       `json:"membership_change,omitempty"`
}

// Summarize builds this node's Summary of the job: its ranks in the last
// round, the root cause of the job wherever it was (so that every node
// names the same one first), the exit code every node exits with, and
// each round's root cause when there was more than one.
func (o *Outcome) Summarize(host, runID string) *Summary {
	a := o.Last()
	if a == nil {
		return &Summary{Status: "failed", ExitCode: o.ExitCode(), Host: host, RunID: runID, Failures: []RankSummary{}}
	}
	s := Summarize(a.Result, host, runID)
	switch rc := a.RootCause; {
	case rc != nil && rc.Cause != "" && a.Round.NNodes > 1:
		s.causeFrom(*rc)
	case rc != nil && rc.NodeRank != a.Round.NodeRank:
		r := FailureSummary(*rc)
		s.RootCause, s.Status = &r, "failed"
	}
	s.ExitCode = o.ExitCode()
	switch {
	case a.Unconfirmed != nil:
		s.Status, s.Unconfirmed = "unconfirmed", a.Unconfirmed.Error()
	case s.ExitCode != 0 && s.Status == "succeeded":
		s.Status = "failed" // stopped by another node, which closed the run
	}
	if len(o.Attempts) > 1 {
		for _, x := range o.Attempts {
			as := AttemptSummary{Round: x.Round.Number, Restart: x.Round.Restart, Nodes: x.Round.NNodes, Change: x.Change}
			if x.RootCause != nil {
				r := FailureSummary(*x.RootCause)
				if x.RootCause.NodeRank == x.Round.NodeRank {
					r.RemoteNode = nil // this node's own
				}
				as.RootCause = &r
			}
			s.Attempts = append(s.Attempts, as)
		}
	}
	return s
}

// FailureSummary is a failure published by a node, as a Summary shows a
// rank: a lost node is rank -1 with a note.
func FailureSummary(f rendezvous.Failure) RankSummary {
	node := f.NodeRank
	r := RankSummary{Rank: f.Rank, LocalRank: f.LocalRank, Host: f.Host, Pid: f.Pid, ExitCode: f.ExitCode, Time: f.Time, RemoteNode: &node}
	if f.Signal != 0 {
		r.ExitCode, r.Signal, r.SignalNum = -f.Signal, launcher.SignalName(syscall.Signal(f.Signal)), f.Signal
	}
	switch {
	case f.Lost:
		r.Note = f.String()
	case f.Cause != "":
		where := f.Addr
		if where == "" { // a static job publishes no address
			where = f.Host
		}
		r.Note = fmt.Sprintf("node %d (%s): %s", f.NodeRank, where, f.Cause)
	case f.Rank < 0:
		r.Note = fmt.Sprintf("node %d (%s): %s", f.NodeRank, f.Addr, f.Message)
	default:
		r.Note = fmt.Sprintf("on node %d (%s)", f.NodeRank, f.Addr)
		if f.Message != "" {
			r.Error = &launcher.ErrorFile{Message: f.Message}
			r.ErrorFile = "<on " + f.Host + ">"
		}
	}
	return r
}

// writeAttempts lists each round's root cause when the job ran more than
// one round.
func (s *Summary) writeAttempts(b *strings.Builder, sep string) {
	if len(s.Attempts) < 2 {
		return
	}
	b.WriteString(sep + "Attempts:\n")
	for _, a := range s.Attempts {
		fmt.Fprintf(b, "  round %d (restart %d, %d nodes): ", a.Round, a.Restart, a.Nodes)
		switch {
		case a.RootCause != nil && a.RootCause.Rank >= 0:
			fmt.Fprintf(b, "rank %d on %s exited %s\n", a.RootCause.Rank, a.RootCause.Host, exitText(*a.RootCause))
		case a.RootCause != nil:
			fmt.Fprintf(b, "%s\n", a.RootCause.Note)
		case a.Change != "":
			fmt.Fprintf(b, "%s\n", a.Change)
		default:
			b.WriteString("succeeded\n")
		}
	}
}

// CauseNode is the node whose launcher found a Summary's Cause.
type CauseNode struct {
	NodeRank int    `json:"node_rank"`
	Host     string `json:"host"`
	Addr     string `json:"addr,omitempty"`
}

// causeFrom makes f, a hang or a timeout found on some node of the job,
// the summary's root cause: the cause and its node, in place of this
// node's own (which may be the same kind, found a moment later).
func (s *Summary) causeFrom(f rendezvous.Failure) {
	s.Cause, s.CauseNode, s.RootCause, s.Status = f.Cause, &CauseNode{NodeRank: f.NodeRank, Host: f.Host, Addr: f.Addr}, nil, "failed"
}
