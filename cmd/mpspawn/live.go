package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/job"
	"github.com/mpspawn/mpspawn/launcher/live"
)

// publishLive makes j publish its ranks for mpspawn status and top once
// they have started (package live), and says once who this launcher is
// (noteStart). remote, when not nil, also gets the node's summary for the
// other nodes. close removes the state file; call it at the end.
func (p *plan) publishLive(ctx context.Context, j *job.Job, notes io.Writer, rdzv any) (close func()) {
	host, _ := os.Hostname()
	pub := &live.Publisher{Info: live.State{RunID: p.runID, Host: host, MaxRestarts: p.multi.maxRestarts}}
	if r, ok := rdzv.(statusPublisher); ok {
		pub.Remote, pub.Peers = r.PublishStatus, r.StatusRecords
	}
	if p.logDir != "" {
		pub.Info.LogDir = filepath.Join(p.logDir, p.runID)
	}
	if os.Getenv("MPSPAWN_LIVE") == "0" { // off: for measuring what it costs (bench/status_cost.py)
		pub = nil
	} else if err := pub.Open(); err != nil {
		fmt.Fprintf(notes, "mpspawn: note: no live state for mpspawn status: %v\n", err)
		pub = nil
	}
	noted := false
	j.Started = func(g *launcher.Group, attempt int) func() {
		if !noted {
			noted = true
			p.noteStart(notes)
		}
		if pub == nil {
			return func() {}
		}
		pub.Info.NodeRank, pub.Info.Nodes, pub.Info.WorldSize = j.NodeRank, j.NNodes, j.WorldSize
		return pub.Attach(ctx, g, attempt)
	}
	return func() {
		if pub != nil {
			pub.Close()
		}
	}
}

// statusPublisher is a rendezvous that carries the nodes' status
// summaries (etcd, and c10d on it).
type statusPublisher interface {
	PublishStatus(ctx context.Context, summary []byte) error
	StatusRecords(ctx context.Context) ([][]byte, error)
}

// noteStart says, once the ranks have started, who this launcher is: its
// pid and run id (what mpspawn status and top take) and, with --log-dir,
// the run's log directory.
func (p *plan) noteStart(notes io.Writer) {
	logs := ""
	if p.logDir != "" {
		logs = ", logs in " + filepath.Join(p.logDir, p.runID)
	}
	fmt.Fprintf(notes, "mpspawn: pid %d, run id %s%s (mpspawn status %d)\n", os.Getpid(), p.runID, logs, os.Getpid())
}
