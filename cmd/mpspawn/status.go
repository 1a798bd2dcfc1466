package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/mpspawn/mpspawn/launcher/live"
	"github.com/urfave/cli/v2"
)

func statusCommand() *cli.Command {
	return &cli.Command{
		Name:      "status",
		Usage:     "show the mpspawn jobs running on this machine, or one job's ranks",
		UsageText: "mpspawn status [PID|RUN_ID] [--json]\nmpspawn status --rdzv-endpoint HOST:PORT --rdzv-id ID [--rdzv-backend etcd|c10d] [--rdzv-conf K=V,...] [--json]",
		Description: "With no argument, one line per mpspawn job this user runs on this machine: pid, run id,\n" +
			"ranks alive/total, age, attempt. With a launcher's pid or a run id, a table of the job's\n" +
			"ranks: state, CPU % over the last second, RSS, threads, seconds since the last output\n" +
			"line (! marks a straggler: over 5x its peers' median and over 30 s), that line, restarts.\n" +
			"--json prints the same as one object (docs/diagnosis.md). It reads the state file each\n" +
			"launcher writes every second; a job of another user is shown only if that user's files\n" +
			"allow it. With --rdzv-endpoint and --rdzv-id (and the job's --rdzv-backend and --rdzv-conf),\n" +
			"on any machine that reaches the job's etcd, every node's ranks as the nodes publish them\n" +
			"there every 3 s, and a line for a node that stopped publishing.",
		Flags:  append([]cli.Flag{&cli.BoolFlag{Name: fJSON, Usage: "print one JSON object"}}, remoteFlags()...),
		Action: statusAction,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
	}
}

func statusAction(c *cli.Context) error {
	if c.NArg() > 1 {
		return usagef("status: unexpected argument %q", c.Args().Get(1))
	}
	if err := checkRemoteFlags(c); err != nil {
		return err
	}
	w, now := c.App.Writer, time.Now()
	if c.NArg() == 0 && !c.IsSet(fRdzvEndpoint) {
		jobs, err := live.List()
		if err != nil {
			return err
		}
		if c.Bool(fJSON) {
			return writeJSON(w, map[string]any{"jobs": nonNil(jobs)})
		}
		writeJobs(w, jobs, now)
		return nil
	}
	src, err := sourceOf(c, c.Args().First())
	if err != nil {
		return err
	}
	sts, err := src(c.Context)
	if err != nil {
		return err
	}
	if c.Bool(fJSON) {
		return writeJSON(w, merged(sts))
	}
	for _, st := range sts {
		fmt.Fprintln(w, cut(jobLine(st, now), termWidth(w)))
	}
	writeRanks(w, rankRows(sts, byRank), termWidth(w))
	return nil
}

// findJob returns the state of the job that arg names, a launcher's pid
// or a run id, as one state per node (this one's first).
func findJob(arg string) ([]*live.State, error) {
	var de *live.DeniedError
	if pid, err := strconv.Atoi(arg); err == nil && pid > 0 {
		st, err := live.Read(pid)
		switch {
		case errors.As(err, &de):
			return nil, usagef("status: job %d belongs to user %d, whose files this user may not read", de.Pid, de.UID)
		case errors.Is(err, live.ErrNotFound):
			return nil, usagef("status: no mpspawn job with pid %d on this machine", pid)
		case err != nil:
			return nil, err
		}
		return withPeers(st), nil
	}
	jobs, err := live.List()
	if err != nil {
		return nil, err
	}
	for _, st := range jobs {
		if st.RunID == arg {
			return withPeers(st), nil
		}
	}
	return nil, usagef("status: no mpspawn job with pid or run id %q on this machine", arg)
}

// withPeers is st and the other nodes' states it holds, one per node.
func withPeers(st *live.State) []*live.State {
	sts := []*live.State{st}
	for i := range st.Peers {
		sts = append(sts, &st.Peers[i])
	}
	return sts
}

// writeJobs writes one line per job.
func writeJobs(w io.Writer, jobs []*live.State, now time.Time) {
	if len(jobs) == 0 {
		fmt.Fprintln(w, "no mpspawn jobs of this user on this machine")
		return
	}
	fmt.Fprintf(w, "%8s  %-20s %11s %6s %7s\n", "PID", "RUN ID", "RANKS", "AGE", "ATTEMPT")
	for _, st := range jobs {
		fmt.Fprintf(w, "%8d  %-20s %5d/%-5d %6s %7d\n", st.Pid, st.RunID, st.Alive(), len(st.Ranks), formatAge(now.Sub(st.Started).Seconds()), st.Attempt)
	}
}

// merged is a job's states (one per node) as one: the first, with every
// node's ranks, ordered by rank, and Nodes listing each node's state
// without its ranks.
func merged(sts []*live.State) *live.State {
	if len(sts) == 1 {
		return sts[0]
	}
	base := sts[0]
	for _, st := range sts {
		if !st.Gone {
			base = st
			break
		}
	}
	m := *base
	m.Peers, m.Gone = nil, false
	m.Ranks = rankRows(sts, byRank)
	for _, st := range sts {
		n := *st
		n.Ranks, n.Peers = nil, nil
		m.NodeStates = append(m.NodeStates, n)
	}
	return &m
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func nonNil[T any](s []T) []T {
	if s == nil {
		return []T{}
	}
	return s
}
