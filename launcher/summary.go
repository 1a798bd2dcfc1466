package launcher

import (
	"encoding/json"
	"fmt"
	"io"
	"strings"
	"time"
)

// Summary is the machine-readable account of a job's end, written by
// mpspawn --summary-json. Failures lists every failed rank, root cause
// first.
type Summary struct {
	Status      string        `json:"status"` // "succeeded", "failed" or "interrupted"
	ExitCode    int           `json:"exit_code"`
	Host        string        `json:"host"`
	RunID       string        `json:"run_id"`
	Interrupted string        `json:"interrupted_by,omitempty"`
	RootCause   *RankSummary  `json:"root_cause"`
	Failures    []RankSummary `json:"failures"`
	Ranks       []RankSummary `json:"ranks"`
}

// RankSummary is one rank's line in a Summary.
type RankSummary struct {
	Rank      int        `json:"rank"`
	LocalRank int        `json:"local_rank"`
	Host      string     `json:"host"`
	Pid       int        `json:"pid"`
	ExitCode  int        `json:"exit_code"`
	Signal    string     `json:"signal,omitempty"`
	Stopped   bool       `json:"stopped_by_launcher"`
	Time      time.Time  `json:"time"`
	ErrorFile string     `json:"error_file,omitempty"`
	Error     *ErrorFile `json:"error,omitempty"`
}

// Summarize builds the Summary of a result.
func (r *Result) Summarize(host, runID string) *Summary {
	s := &Summary{Status: "succeeded", ExitCode: r.ExitCode(), Host: host, RunID: runID, Failures: []RankSummary{}}
	rank := func(i int) RankSummary {
		x := &r.Ranks[i]
		rs := RankSummary{Rank: x.Rank, LocalRank: x.LocalRank, Host: host, Pid: x.Pid,
			ExitCode: x.ExitCode, Stopped: x.Stopped, Time: x.Ended, Error: x.ErrorFile}
		if x.Signal != 0 {
			rs.Signal = SignalName(x.Signal)
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
	case !r.Succeeded():
		s.Status = "failed"
	}
	return s
}

// WriteJSON writes the summary as indented JSON.
func (s *Summary) WriteJSON(w io.Writer) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(s)
}

// WriteText writes the human summary in torchrun's layout: the root cause
// first, then every other failure.
func (s *Summary) WriteText(w io.Writer, title string) {
	const rule = "============================================================"
	var b strings.Builder
	fmt.Fprintf(&b, "%s\n%s FAILED\n", rule, title)
	if s.Interrupted != "" {
		fmt.Fprintf(&b, "  mpspawn was interrupted by %s and stopped the ranks\n", s.Interrupted)
	}
	b.WriteString(strings.Repeat("-", len(rule)) + "\n")
	if s.RootCause != nil {
		b.WriteString("Root Cause (first observed failure):\n")
		writeRank(&b, *s.RootCause)
	}
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
		b.WriteString(strings.Repeat("-", len(rule)) + "\nOther Failures:\n")
		for _, f := range others {
			writeRank(&b, f)
		}
	}
	if len(stopped) > 0 {
		b.WriteString(strings.Repeat("-", len(rule)) + "\nStopped by mpspawn (signalled before they exited):\n")
		for _, f := range stopped {
			fmt.Fprintf(&b, "[%d]: local_rank %d, pid %d, exitcode %s\n", f.Rank, f.LocalRank, f.Pid, exitText(f))
		}
	}
	b.WriteString(rule + "\n")
	_, _ = io.WriteString(w, b.String())
}

func writeRank(b *strings.Builder, r RankSummary) {
	fmt.Fprintf(b, "[%d]:\n", r.Rank)
	fmt.Fprintf(b, "  time      : %s\n", r.Time.Format("2006-01-02_15:04:05.000"))
	fmt.Fprintf(b, "  host      : %s\n", r.Host)
	fmt.Fprintf(b, "  rank      : %d (local_rank: %d)\n", r.Rank, r.LocalRank)
	fmt.Fprintf(b, "  exitcode  : %s (pid: %d)\n", exitText(r), r.Pid)
	if r.Error != nil {
		fmt.Fprintf(b, "  error_file: %s\n", r.ErrorFile)
		fmt.Fprintf(b, "  message   : %s\n", r.Error.Message)
		if r.Error.Traceback != "" {
			b.WriteString("  traceback :\n")
			for _, l := range strings.Split(strings.TrimRight(r.Error.Traceback, "\n"), "\n") {
				b.WriteString("    " + l + "\n")
			}
		}
	} else {
		b.WriteString("  error_file: <N/A>\n  traceback : To enable traceback see: https://pytorch.org/docs/stable/elastic/errors.html\n")
	}
}

// exitText is torchrun's way of writing an exit: "3", or "-SIGTERM".
func exitText(r RankSummary) string {
	if r.Signal != "" {
		return "-" + r.Signal
	}
	return fmt.Sprint(r.ExitCode)
}
