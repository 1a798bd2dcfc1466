// Package live publishes what a running job's ranks are doing, for
// mpspawn status and mpspawn top: a launcher runs a Publisher, which
// samples every rank once a second (its state, CPU, memory and threads
// from /proc, its last output line from the launcher's relay) and writes
// the job's State as a small JSON file into a directory only its user can
// read; Read and List read those files back.
//
// The files are the launcher's own: no rank is attached to or signalled to
// make them. The schema is State's (docs/diagnosis.md).
package live

import (
	"fmt"
	"slices"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
)

// Version is the schema version of State.
const Version = 1

// State is one launcher's job as it publishes it: who it is, and its ranks.
type State struct {
	Version     int       `json:"version"`
	Pid         int       `json:"pid"`
	StartTicks  uint64    `json:"start_ticks"` // the launcher's start time in /proc/PID/stat: a reused pid has another
	RunID       string    `json:"run_id"`
	Host        string    `json:"host"`
	NodeRank    int       `json:"node_rank"`
	Nodes       int       `json:"nodes"`
	WorldSize   int       `json:"world_size"`
	Attempt     int       `json:"attempt"`
	MaxRestarts int       `json:"max_restarts"`
	LogDir      string    `json:"log_dir,omitempty"`
	Started     time.Time `json:"started"`
	Updated     time.Time `json:"updated"`
	IntervalMS  int       `json:"interval_ms"`
	Ranks       []Rank    `json:"ranks"`
	// Gone is set by a reader, never published: the node stopped
	// publishing (its record expired with its lease).
	Gone bool `json:"gone,omitempty"`
	// NodeStates, set by a reader that merged the states of a job's
	// nodes into one, holds each node's state without its ranks.
	NodeStates []State `json:"node_states,omitempty"`
	// Peers holds the other nodes' states as this node last read them
	// (Publisher.Peers), with Gone set on one that stopped publishing.
	Peers []State `json:"peers,omitempty"`
}

// Rank is one rank of a State.
type Rank struct {
	Rank      int    `json:"rank"`
	LocalRank int    `json:"local_rank"`
	Node      int    `json:"node"`
	Pid       int    `json:"pid"`
	State     string `json:"state"` // running, sleeping, disk-sleep, stopped, zombie, idle, exited, starting
	// ExitCode is the exit status of an exited rank (null while it runs,
	// -1 when a signal killed it); Signal names that signal.
	ExitCode *int   `json:"exit_code"`
	Signal   string `json:"signal,omitempty"`
	// StoppedByMpspawn: the launcher had signalled the rank before it exited.
	StoppedByMpspawn bool    `json:"stopped_by_mpspawn,omitempty"`
	CPUPercent       float64 `json:"cpu_percent"` // over the last interval; 100 is one core
	RSSBytes         int64   `json:"rss_bytes"`
	Threads          int     `json:"threads"`
	// OutputAgeS is the seconds since the rank's last output line (since
	// it started when it wrote none yet).
	OutputAgeS float64 `json:"output_age_s"`
	LastLine   string  `json:"last_line"`
	Restarts   int     `json:"restarts"`
	// Straggler: its output age is over 5 times its live peers' median
	// and over 30 s.
	Straggler bool `json:"straggler,omitempty"`
}

// Status is the rank's state in words, as a table shows it: "running",
// "exited 3", "killed SIGTERM (by mpspawn)".
func (r *Rank) Status() string {
	if r.ExitCode == nil {
		return r.State
	}
	s := fmt.Sprintf("exited %d", *r.ExitCode)
	if r.Signal != "" {
		s = "killed " + r.Signal
	}
	if r.StoppedByMpspawn {
		s += " (by mpspawn)"
	}
	return s
}

// Alive counts the ranks that have not exited.
func (s *State) Alive() int {
	n := 0
	for i := range s.Ranks {
		if s.Ranks[i].ExitCode == nil {
			n++
		}
	}
	return n
}

// stateName is a /proc state letter in words.
func stateName(c byte) string {
	switch c {
	case 'R':
		return "running"
	case 'S':
		return "sleeping"
	case 'D':
		return "disk-sleep"
	case 'T', 't':
		return "stopped"
	case 'Z':
		return "zombie"
	case 'I':
		return "idle"
	}
	return "unknown"
}

// exitOf fills r's exit from st.
func exitOf(r *Rank, st *launcher.RankState) {
	code := st.ExitCode
	r.ExitCode = &code
	r.State = "exited"
	if st.Signal != 0 {
		r.Signal = launcher.SignalName(st.Signal)
	}
	r.StoppedByMpspawn = st.Stopped
}

// StragglerAge and StragglerFactor are the straggler rule: a live rank
// whose output age is over StragglerFactor times its live peers' median
// and over StragglerAge.
const (
	StragglerAge    = 30 * time.Second
	StragglerFactor = 5
)

// markStragglers sets Straggler on the live ranks the rule picks.
func markStragglers(ranks []Rank, scratch []float64) []float64 {
	ages := scratch[:0]
	for i := range ranks {
		if ranks[i].ExitCode == nil {
			ages = append(ages, ranks[i].OutputAgeS)
		}
	}
	if len(ages) < 2 {
		return ages
	}
	slices.Sort(ages)
	med := ages[len(ages)/2]
	if len(ages)%2 == 0 {
		med = (ages[len(ages)/2-1] + ages[len(ages)/2]) / 2
	}
	for i := range ranks {
		a := ranks[i].OutputAgeS
		ranks[i].Straggler = ranks[i].ExitCode == nil && a > StragglerFactor*med && a > StragglerAge.Seconds()
	}
	return ages
}
