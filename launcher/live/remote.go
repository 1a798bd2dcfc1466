package live

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
)

// A node's summary is its State as Publisher.Remote gets it: its ranks
// (each last line cut short) and, in Peers, the nodes it saw stop
// publishing (Gone, without ranks). Other nodes, and readers outside the
// job, read the summaries back with ParseSummary and Nodes.

// maxSummary bounds a summary that ParseSummary accepts (the
// rendezvous's own bound on a status record).
const maxSummary = 256 << 10

// maxNodes bounds the node count and node ranks a summary may claim.
const maxNodes = 1024

// ParseSummary parses and verifies a node's summary of run runID: at most
// 256 KiB, one JSON object of this schema version with no unknown field,
// a node rank below its node count (at most 1024), ranks of that node,
// and peers that are gone nodes of the same run.
func ParseSummary(rec []byte, runID string) (State, error) {
	var st State
	if len(rec) > maxSummary {
		return st, fmt.Errorf("live: summary of %d bytes, over %d", len(rec), maxSummary)
	}
	d := json.NewDecoder(bytes.NewReader(rec))
	d.DisallowUnknownFields()
	if err := d.Decode(&st); err != nil {
		return State{}, fmt.Errorf("live: summary: %w", err)
	}
	if d.More() {
		return State{}, errors.New("live: summary: data after the object")
	}
	if err := st.checkSummary(runID); err != nil {
		return State{}, fmt.Errorf("live: summary of node %d: %w", st.NodeRank, err)
	}
	return st, nil
}

// checkSummary checks what ParseSummary verifies of a decoded summary.
func (s *State) checkSummary(runID string) error {
	switch {
	case s.Version != Version:
		return fmt.Errorf("schema version %d, not %d", s.Version, Version)
	case s.RunID != runID:
		return fmt.Errorf("run id %q, not %q", s.RunID, runID)
	case s.Nodes < 1 || s.Nodes > maxNodes || s.NodeRank < 0 || s.NodeRank >= s.Nodes:
		return fmt.Errorf("node rank %d of %d nodes", s.NodeRank, s.Nodes)
	case s.Gone || len(s.NodeStates) > 0:
		return errors.New("fields only a reader sets")
	}
	for i := range s.Ranks {
		if r := &s.Ranks[i]; r.Node != s.NodeRank || r.Rank < 0 {
			return fmt.Errorf("rank %d of node %d", r.Rank, r.Node)
		}
	}
	for i := range s.Peers {
		p := &s.Peers[i]
		if !p.Gone || len(p.Ranks) > 0 || len(p.Peers) > 0 || p.RunID != runID || p.NodeRank < 0 || p.NodeRank >= maxNodes {
			return fmt.Errorf("peer %d: not a gone node of the run", p.NodeRank)
		}
	}
	return nil
}

// Nodes is a run's nodes from their summaries (recs, as the rendezvous
// holds them), by node rank, one state each: a summary that does not
// verify is left out (and counted in bad); a node that another's summary
// lists as gone, or that the node count says exists, and that has no
// summary of its own, is a Gone state (with what its peer knew of it).
func Nodes(recs [][]byte, runID string) (nodes []State, bad int) {
	byRank := map[int]State{}
	count := 0
	var gone []State
	for _, rec := range recs {
		st, err := ParseSummary(rec, runID)
		if _, dup := byRank[st.NodeRank]; err != nil || dup {
			bad++
			continue
		}
		gone = append(gone, st.Peers...)
		st.Peers = nil
		byRank[st.NodeRank] = st
		count = max(count, st.Nodes)
	}
	for _, g := range gone {
		if _, ok := byRank[g.NodeRank]; !ok {
			byRank[g.NodeRank] = g
		}
	}
	for n := range count {
		if _, ok := byRank[n]; !ok {
			byRank[n] = State{Version: Version, RunID: runID, NodeRank: n, Nodes: count, Gone: true}
		}
	}
	for _, st := range byRank {
		nodes = append(nodes, st)
	}
	slices.SortFunc(nodes, func(a, b State) int { return a.NodeRank - b.NodeRank })
	return nodes, bad
}

// goneOnly is the gone nodes of peers, without their ranks: what a
// summary carries of them.
func goneOnly(peers []State) []State {
	var out []State
	for _, p := range peers {
		if p.Gone {
			p.Ranks, p.Peers, p.NodeStates = nil, nil, nil
			out = append(out, p)
		}
	}
	return out
}
