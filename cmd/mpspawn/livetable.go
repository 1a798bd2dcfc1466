package main

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/launcher/live"
)

// The live table: one line per rank, as mpspawn status and top show it.

// sortKey is the order of a live table's rows.
type sortKey int

const (
	byRank sortKey = iota
	byCPU
	byAge
)

func (k sortKey) String() string {
	return [...]string{"rank", "CPU", "output age"}[k]
}

// liveHeader is the table's header; lastCol is where the last output line
// starts.
const (
	liveHeader = "RANK  LR NODE     PID STATE       CPU%    RSS  THR    AGE RST LAST OUTPUT"
	lastCol    = len("RANK  LR NODE     PID STATE       CPU%    RSS  THR    AGE RST ")
)

// rankRows are the ranks of sts (every node's), in order k.
func rankRows(sts []*live.State, k sortKey) []live.Rank {
	var rows []live.Rank
	for _, st := range sts {
		rows = append(rows, st.Ranks...)
	}
	slices.SortStableFunc(rows, func(a, b live.Rank) int {
		switch k {
		case byCPU:
			if a.CPUPercent != b.CPUPercent {
				return cmpDesc(a.CPUPercent, b.CPUPercent)
			}
		case byAge:
			if a.OutputAgeS != b.OutputAgeS {
				return cmpDesc(a.OutputAgeS, b.OutputAgeS)
			}
		}
		return a.Rank - b.Rank
	})
	return rows
}

func cmpDesc(a, b float64) int {
	if a > b {
		return -1
	}
	return 1
}

// writeRanks writes the table of rows, each line cut to width.
func writeRanks(w io.Writer, rows []live.Rank, width int) {
	fmt.Fprintln(w, cut(liveHeader, width))
	stopped := false
	for i := range rows {
		r := &rows[i]
		state := tableState(r)
		stopped = stopped || r.StoppedByMpspawn
		age := formatAge(r.OutputAgeS)
		if r.Straggler {
			age += "!"
		}
		line := fmt.Sprintf("%4d %3d %4d %7d %-11s %4s %6s %4s %6s %3d ", r.Rank, r.LocalRank, r.Node, r.Pid, cut(state, 11),
			cpuText(r), rssText(r), threadsText(r), age, r.Restarts)
		fmt.Fprintln(w, cut(line+printable(r.LastLine), width))
	}
	if stopped {
		fmt.Fprintln(w, cut("* stopped by mpspawn (signalled before it exited)", width))
	}
}

// tableState is a rank's state in a table cell: "running", "exit 3",
// "SIGTERM*" (* stopped by mpspawn).
func tableState(r *live.Rank) string {
	if r.ExitCode == nil {
		return r.State
	}
	s := "exit " + strconv.Itoa(*r.ExitCode)
	if r.Signal != "" {
		s = r.Signal
	}
	if r.StoppedByMpspawn {
		s += "*"
	}
	return s
}

func cpuText(r *live.Rank) string {
	if r.ExitCode != nil {
		return "-"
	}
	return strconv.FormatFloat(r.CPUPercent, 'f', 0, 64)
}

func threadsText(r *live.Rank) string {
	if r.ExitCode != nil {
		return "-"
	}
	return strconv.Itoa(r.Threads)
}

func rssText(r *live.Rank) string {
	if r.ExitCode != nil {
		return "-"
	}
	return formatBytes(r.RSSBytes)
}

// formatBytes is n in K, M or G, three digits at most.
func formatBytes(n int64) string {
	v, unit := float64(n), "B"
	for _, u := range []string{"K", "M", "G", "T"} {
		if v < 1000 {
			break
		}
		v, unit = v/1024, u
	}
	if v < 10 && unit != "B" {
		return strconv.FormatFloat(v, 'f', 1, 64) + unit
	}
	return strconv.FormatFloat(v, 'f', 0, 64) + unit
}

// formatAge is a number of seconds as "42s", "12m" or "3h".
func formatAge(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < 100*time.Second:
		return strconv.Itoa(int(d.Seconds())) + "s"
	case d < 100*time.Minute:
		return strconv.Itoa(int(d.Minutes())) + "m"
	}
	return strconv.Itoa(int(d.Hours())) + "h"
}

// cut cuts s to width columns (bytes of ASCII; a rune counts as one).
func cut(s string, width int) string {
	n := 0
	for i := range s {
		if n == width {
			return s[:i]
		}
		n++
	}
	return s
}

// printable is a rank's line with control characters (escape sequences
// of progress bars, tabs) made harmless for a terminal.
func printable(s string) string {
	return strings.Map(func(r rune) rune {
		if r < 0x20 || r == 0x7f {
			return ' '
		}
		return r
	}, s)
}

// jobLine is one job's line above its table: who, how long, its ranks by
// state, the slowest rank's output age.
func jobLine(st *live.State, now time.Time) string {
	counts := map[string]int{}
	var order []string
	slowest := -1
	for i := range st.Ranks {
		r := &st.Ranks[i]
		s := r.State
		if r.ExitCode != nil {
			s = "exited"
		}
		if counts[s] == 0 {
			order = append(order, s)
		}
		counts[s]++
		if r.ExitCode == nil && (slowest < 0 || r.OutputAgeS > st.Ranks[slowest].OutputAgeS) {
			slowest = i
		}
	}
	var parts []string
	for _, s := range order {
		parts = append(parts, fmt.Sprintf("%d %s", counts[s], shortState(s)))
	}
	if st.Gone && st.Updated.IsZero() {
		return fmt.Sprintf("node %d: gone (no status record: it stopped publishing, or never did)", st.NodeRank)
	}
	if st.Gone {
		return fmt.Sprintf("node %d %s: gone (no status for %s)", st.NodeRank, st.Host, formatAge(now.Sub(st.Updated).Seconds()))
	}
	line := fmt.Sprintf("pid %d %s up %s try %d", st.Pid, st.RunID, formatAge(now.Sub(st.Started).Seconds()), st.Attempt)
	if st.Nodes > 1 {
		line += fmt.Sprintf(" node %d/%d %s", st.NodeRank, st.Nodes, st.Host)
	}
	line += ": " + strings.Join(parts, ", ")
	if slowest >= 0 {
		line += fmt.Sprintf("; slowest r%d %s", st.Ranks[slowest].Rank, formatAge(st.Ranks[slowest].OutputAgeS))
	}
	return line
}

// shortState is a state word as the job line counts it.
func shortState(s string) string {
	switch s {
	case "running":
		return "run"
	case "sleeping":
		return "sleep"
	case "exited":
		return "exit"
	}
	return s
}
