package job

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/launcher/diag"
)

// Summary is the machine-readable account of a job's end, written by
// mpspawn --summary-json. Failures lists every failed rank, root cause
// first.
type Summary struct {
	Status      string `json:"status"` // "succeeded", "failed", "interrupted" or "unconfirmed" (see Unconfirmed)
	ExitCode    int    `json:"exit_code"`
	Host        string `json:"host"`
	RunID       string `json:"run_id"`
	Interrupted string `json:"interrupted_by,omitempty"`
	// Interpreter is what ran the ranks' script, when it was one:
	// "/usr/bin/python3 (python3 on PATH)". The caller sets it.
	Interpreter string `json:"interpreter,omitempty"`
	// Cause is why mpspawn stopped the job when no rank's failure did:
	// "hang: no output for 5m0s", "timeout: the job ran for 10m0s".
	Cause string `json:"cause,omitempty"`
	// CauseNode is the node whose launcher found Cause, in a job of
	// more than one node; nil otherwise.
	CauseNode *CauseNode `json:"cause_node,omitempty"`
	// Unconfirmed, with Status "unconfirmed", is what this node of a
	// multi-node job could not confirm although its own ranks succeeded
	// (the other nodes' success, the run's close): the job failed here.
	Unconfirmed string        `json:"unconfirmed,omitempty"`
	RootCause   *RankSummary  `json:"root_cause"`
	Failures    []RankSummary `json:"failures"`
	Ranks       []RankSummary `json:"ranks"`
	// Attempts lists every round's root cause when the job ran more than
	// one (restarts, changes of membership); see Outcome.Summarize.
	Attempts []AttemptSummary `json:"attempts,omitempty"`
}

// RankSummary is one rank's line in a Summary.
type RankSummary struct {
	Rank      int    `json:"rank"`
	LocalRank int    `json:"local_rank"`
	Host      string `json:"host"`
	Pid       int    `json:"pid"`
	// ExitCode is the rank's exit code, or, for a rank a signal ended,
	// minus the signal's number, as torchrun writes it (-9, with Signal
	// "SIGKILL"): the text summary shows the same ("-9 (SIGKILL)").
	ExitCode  int       `json:"exit_code"`
	Signal    string    `json:"signal,omitempty"`
	SignalNum int       `json:"signal_number,omitempty"`
	Stopped   bool      `json:"stopped_by_launcher"`
	Time      time.Time `json:"time"`
	// ErrorFile is where the rank's error file is, when it wrote one that
	// is kept after the launcher exits.
	ErrorFile string              `json:"error_file,omitempty"`
	Error     *launcher.ErrorFile `json:"error,omitempty"`
	// Stderr is the rank's last stderr lines (RankResult.Stderr).
	Stderr string `json:"stderr_tail,omitempty"`
	// Note is RankResult.Note.
	Note string `json:"note,omitempty"`
	// Cost is RankResult.Cost; zero for a rank of another node, whose
	// summary has it (RemoteNode says which).
	Cost CostSummary `json:"cost"`
	// RemoteNode is the node rank of a rank that ran on another node (the
	// root cause published by that node); nil for this node's ranks.
	RemoteNode *int `json:"remote_node,omitempty"`
	// Stack is RankResult.Stack: where the rank was when mpspawn stopped
	// the job for a hang or a timeout.
	Stack *diag.Stack `json:"stack,omitempty"`
}

// CostSummary is a rank's Cost in a Summary, in seconds and bytes.
type CostSummary struct {
	WallSeconds   float64 `json:"wall_seconds"`
	UserSeconds   float64 `json:"user_cpu_seconds"`
	SystemSeconds float64 `json:"system_cpu_seconds"`
	CPUSource     string  `json:"cpu_source,omitempty"`
	// PeakMemory is in bytes, 0 when unknown; MemorySource says what it
	// measures (SourceCgroupMemory or SourceMaxRSS).
	PeakMemory   int64  `json:"peak_memory_bytes"`
	MemorySource string `json:"peak_memory_source,omitempty"`
	// GPUMemory is Cost.GPUMemory, omitted when unknown.
	GPUMemory int64 `json:"peak_gpu_memory_bytes,omitempty"`
}

func costSummary(c launcher.Cost) CostSummary {
	return CostSummary{
		WallSeconds: c.Wall.Seconds(), UserSeconds: c.User.Seconds(), SystemSeconds: c.System.Seconds(),
		CPUSource: c.CPUSource, PeakMemory: c.PeakMemory, MemorySource: c.MemorySource, GPUMemory: c.GPUMemory,
	}
}

func (c CostSummary) cost() launcher.Cost {
	sec := func(f float64) time.Duration { return time.Duration(f * float64(time.Second)) }
	return launcher.Cost{Wall: sec(c.WallSeconds), User: sec(c.UserSeconds), System: sec(c.SystemSeconds),
		CPUSource: c.CPUSource, PeakMemory: c.PeakMemory, MemorySource: c.MemorySource, GPUMemory: c.GPUMemory}
}

// Summarize builds the Summary of a Group's result.
func Summarize(r *launcher.Result, host, runID string) *Summary {
	s := &Summary{Status: "succeeded", ExitCode: r.ExitCode(), Host: host, RunID: runID, Failures: []RankSummary{}}
	rank := func(i int) RankSummary {
		x := &r.Ranks[i]
		rs := RankSummary{Rank: x.Rank, LocalRank: x.LocalRank, Host: host, Pid: x.Pid,
			ExitCode: x.ExitCode, Stopped: x.Stopped, Time: x.Ended, Error: x.ErrorFile,
			Stderr: x.Stderr, Note: x.Note, Cost: costSummary(x.Cost), Stack: x.Stack}
		if x.Signal != 0 {
			rs.ExitCode, rs.Signal, rs.SignalNum = -int(x.Signal), launcher.SignalName(x.Signal), int(x.Signal)
		}
		if x.ErrorFile != nil {
			rs.ErrorFile = x.ErrorFilePath
		}
		return rs
	}
	for i := range r.Ranks {
		s.Ranks = append(s.Ranks, rank(i))
	}
	for _, i := range r.Failures {
		s.Failures = append(s.Failures, rank(i))
	}
	if r.RootCause >= 0 {
		rc := rank(r.RootCause)
		s.RootCause = &rc
	}
	switch {
	case r.Interrupted != nil:
		s.Status, s.Interrupted = "interrupted", r.Interrupted.String()
		if sig, ok := r.Interrupted.(syscall.Signal); ok {
			s.Interrupted = launcher.SignalName(sig)
		}
	case !r.Succeeded():
		s.Status = "failed"
	}
	s.Cause = diag.Reason(r.Cause)
	return s
}

// WriteJSON writes the summary as indented JSON.
func (s *Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// WriteText writes the human summary in torchrun's layout: the root cause
// first, then every other failure. A rank without an error file shows the
// end of its stderr instead (a Python traceback, say).
func (s *Summary) WriteText(w io.Writer, title string) {
	const rule = "============================================================"
	sep := strings.Repeat("-", len(rule)) + "\n"
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n%s FAILED\n", rule, title)
	if s.Interpreter != "" {
		fmt.Fprintf(&b, "  interpreter: %s\n", s.Interpreter)
	}
	if s.Interrupted != "" {
		fmt.Fprintf(&b, "  mpspawn got %s and stopped the ranks\n", s.Interrupted)
	}
	if s.RootCause != nil {
		b.WriteString(sep + "Root Cause (first observed failure):\n")
		writeRank(&b, *s.RootCause)
	}
	switch {
	case s.Cause != "" && s.RootCause == nil && s.CauseNode != nil:
		n := s.CauseNode
		fmt.Fprintf(&b, "%sRoot Cause: %s on node %d (%s, %s) (mpspawn stopped the ranks of every node)\n", sep, s.Cause, n.NodeRank, n.Host, n.Addr)
	case s.Cause != "" && s.RootCause == nil:
		fmt.Fprintf(&b, "%sRoot Cause: %s (mpspawn stopped the ranks)\n", sep, s.Cause)
	}
	writeStacks(&b, sep, s.Ranks)
	var others, stopped []RankSummary
	for _, f := range s.Failures {
		switch {
		case s.RootCause != nil && f.Rank == s.RootCause.Rank:
		case f.Stopped:
			stopped = append(stopped, f)
		default:
			others = append(others, f)
		}
	}
	if len(others) > 0 {
		b.WriteString(sep + "Other Failures:\n")
		for _, f := range others {
			writeRank(&b, f)
		}
	}
	if len(stopped) > 0 {
		b.WriteString(sep + "Stopped by mpspawn (signalled before they exited):\n")
		for _, f := range stopped {
			fmt.Fprintf(&b, "[%d]: local_rank %d, pid %d, exitcode %s\n", f.Rank, f.LocalRank, f.Pid, exitText(f))
			if f.Note != "" {
				fmt.Fprintf(&b, "  note      : %s\n", f.Note)
			}
			c := f.Cost.cost()
			fmt.Fprintf(&b, "  cost      : %s\n", costText(&c))
		}
	}
	s.writeAttempts(&b, sep)
	b.WriteString(rule + "\n")
	_, _ = io.WriteString(w, b.String())
}

func writeRank(b *strings.Builder, r RankSummary) {
	fmt.Fprintf(b, "[%d]:\n", r.Rank)
	fmt.Fprintf(b, "  time      : %s\n", r.Time.Format("2006-01-02_15:04:05.000"))
	fmt.Fprintf(b, "  host      : %s\n", r.Host)
	fmt.Fprintf(b, "  rank      : %d (local_rank: %d)\n", r.Rank, r.LocalRank)
	fmt.Fprintf(b, "  exitcode  : %s (pid: %d)\n", exitText(r), r.Pid)
	if r.Note != "" {
		fmt.Fprintf(b, "  note      : %s\n", r.Note)
	}
	switch excerpt := stderrExcerpt(r.Stderr); {
	case r.Error != nil:
		switch r.ErrorFile {
		case "":
			b.WriteString("  error_file: <not kept>\n")
		default:
			fmt.Fprintf(b, "  error_file: %s\n", r.ErrorFile)
		}
		fmt.Fprintf(b, "  message   : %s\n", r.Error.Message)
		if r.Error.Traceback != "" {
			b.WriteString("  traceback :\n")
			for _, l := range strings.Split(strings.TrimRight(r.Error.Traceback, "\n"), "\n") {
				b.WriteString("    " + l + "\n")
			}
		}
	case len(excerpt) > 0:
		b.WriteString("  error_file: <N/A>\n")
		fmt.Fprintf(b, "  message   : %s\n", excerpt[len(excerpt)-1])
		fmt.Fprintf(b, "  stderr    : (last %d lines)\n", len(excerpt))
		for _, l := range excerpt {
			b.WriteString("    " + l + "\n")
		}
	default:
		b.WriteString("  error_file: <N/A>\n  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html\n")
	}
	if r.RemoteNode != nil {
		fmt.Fprintf(b, "  cost      : on node %d (its own summary has it)\n", *r.RemoteNode)
		return
	}
	c := r.Cost.cost()
	fmt.Fprintf(b, "  cost      : %s\n", costText(&c))
}

// Bounds on the stderr excerpt a failure shows.
const (
	excerptLines    = 10 // lines shown of output that is not a traceback
	excerptMaxLines = 40 // lines shown of a Python traceback
)

// stderrExcerpt is what a failure shows of a rank's last stderr lines: the
// last Python traceback when there is one (up to 40 lines of it, its end),
// else the last 10 lines; trailing blank lines are dropped.
func stderrExcerpt(tail string) []string {
	tail = strings.TrimRight(tail, "\n\t ")
	if tail == "" {
		return nil
	}
	lines := strings.Split(tail, "\n")
	n := excerptLines
	for i := len(lines) - 1; i >= 0; i-- {
		if strings.HasPrefix(lines[i], "Traceback (most recent call last):") {
			n = min(len(lines)-i, excerptMaxLines)
			break
		}
	}
	return lines[max(len(lines)-n, 0):]
}

// exitText is torchrun's way of writing an exit, with the signal's name
// beside a negative code: "3", or "-15 (SIGTERM)".
func exitText(r RankSummary) string {
	switch {
	case r.SignalNum != 0:
		return fmt.Sprintf("-%d (%s)", r.SignalNum, r.Signal)
	case r.Signal != "":
		return "-" + r.Signal
	}
	return fmt.Sprint(r.ExitCode)
}

// writeStacks writes, rank by rank, the stacks taken when the job was
// stopped for a hang or a timeout.
func writeStacks(b *strings.Builder, sep string, ranks []RankSummary) {
	shown := false
	for _, r := range ranks {
		if r.Stack == nil {
			continue
		}
		if !shown {
			b.WriteString(sep + "Stacks (where each rank was when mpspawn stopped it):\n")
			shown = true
		}
		fmt.Fprintf(b, "[%d]: local_rank %d, pid %d\n", r.Rank, r.LocalRank, r.Pid)
		if r.Stack.Note != "" {
			fmt.Fprintf(b, "  note      : %s\n", r.Stack.Note)
		}
		for _, l := range strings.Split(r.Stack.Text, "\n") {
			if l != "" {
				b.WriteString("    " + l + "\n")
			}
		}
	}
}

// costText is a rank's cost in the failure summary: "wall 3.2 s, CPU 1.1
// s (user 1.0 s, sys 0.1 s), peak memory 312.4 MiB (cgroup memory.peak)".
func costText(c *launcher.Cost) string {
	var b strings.Builder
	fmt.Fprintf(&b, "wall %s", launcher.Seconds(c.Wall))
	if c.CPUSource != "" {
		fmt.Fprintf(&b, ", CPU %s (user %s, sys %s)", launcher.Seconds(c.CPU()), launcher.Seconds(c.User), launcher.Seconds(c.System))
	}
	if c.PeakMemory > 0 {
		fmt.Fprintf(&b, ", peak memory %s (%s)", launcher.Bytes(c.PeakMemory), c.MemorySource)
	}
	if c.GPUMemory > 0 {
		fmt.Fprintf(&b, ", peak GPU memory %s (NVML accounting)", launcher.Bytes(c.GPUMemory))
	}
	return b.String()
}
