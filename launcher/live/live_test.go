package live

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
	"unicode/utf8"
)

func TestCPUPercent(t *testing.T) {
	t0 := time.Unix(1000, 0)
	for _, c := range []struct {
		name      string
		prev, cur procSample
		want      float64
	}{
		{"one core", procSample{1, 100, t0}, procSample{1, 200, t0.Add(time.Second)}, 100},
		{"two cores over 2s", procSample{1, 0, t0}, procSample{1, 400, t0.Add(2 * time.Second)}, 200},
		{"a quarter", procSample{1, 10, t0}, procSample{1, 35, t0.Add(time.Second)}, 25},
		{"a third, to a tenth", procSample{1, 0, t0}, procSample{1, 1, t0.Add(3 * time.Second)}, 0.3},
		{"idle", procSample{1, 5, t0}, procSample{1, 5, t0.Add(time.Second)}, 0},
		{"first sample", procSample{}, procSample{1, 500, t0}, 0},
		{"another process (restart)", procSample{1, 0, t0}, procSample{2, 100, t0.Add(time.Second)}, 0},
		{"no time passed", procSample{1, 0, t0}, procSample{1, 100, t0}, 0},
		{"ticks went back", procSample{1, 100, t0}, procSample{1, 50, t0.Add(time.Second)}, 0},
	} {
		if got := cpuPercent(c.prev, c.cur); got != c.want {
			t.Errorf("%s: cpuPercent = %v; want %v", c.name, got, c.want)
		}
	}
}

func exited(code int) *int { return &code }

func TestStragglers(t *testing.T) {
	for _, c := range []struct {
		name string
		ages []float64
		dead []bool // exited ranks: never stragglers, not in the median
		want []bool
	}{
		{"over 5x the median and over 30s", []float64{1, 1, 2, 40}, nil, []bool{false, false, false, true}},
		{"over 5x but under 30s", []float64{1, 1, 1, 29}, nil, []bool{false, false, false, false}},
		{"over 30s but under 5x", []float64{10, 10, 12, 49}, nil, []bool{false, false, false, false}},
		{"exactly 5x is not over", []float64{10, 10, 10, 50}, nil, []bool{false, false, false, false}},
		{"every rank silent: no straggler", []float64{100, 100, 100, 100}, nil, []bool{false, false, false, false}},
		{"even count: median of the middle two", []float64{2, 4, 8, 61}, nil, []bool{false, false, false, true}},
		{"exited ranks are left out", []float64{1, 1000, 1000, 1, 40}, []bool{false, true, true, false, false}, []bool{false, false, false, false, true}},
		{"one live rank: no peers", []float64{500, 1}, []bool{false, true}, []bool{false, false}},
	} {
		ranks := make([]Rank, len(c.ages))
		for i, a := range c.ages {
			ranks[i].OutputAgeS = a
			if c.dead != nil && c.dead[i] {
				ranks[i].ExitCode = exited(0)
			}
		}
		markStragglers(ranks, nil)
		for i := range ranks {
			if ranks[i].Straggler != c.want[i] {
				t.Errorf("%s: rank %d (age %v) straggler = %v; want %v", c.name, i, c.ages[i], ranks[i].Straggler, c.want[i])
			}
		}
	}
}

func TestSummaryBoundsLastLine(t *testing.T) {
	long := strings.Repeat("é", 100)      // 200 bytes: a cut at 120 falls on a rune boundary
	odd := "x" + strings.Repeat("é", 100) // a cut at 120 falls inside a rune
	st := &State{Ranks: []Rank{{LastLine: long}, {LastLine: odd}, {LastLine: "short"}}}
	peers := []State{{NodeRank: 1, Gone: true, Ranks: []Rank{{Rank: 2}}}, {NodeRank: 2, Ranks: []Rank{{Rank: 4}}}}
	sum := summary(st, peers)
	for i, r := range sum.Ranks {
		if len(r.LastLine) > remoteLine || !utf8.ValidString(r.LastLine) || !strings.HasPrefix(st.Ranks[i].LastLine, r.LastLine) {
			t.Errorf("rank %d's line in the summary = %q (%d bytes); want a valid prefix of at most %d bytes", i, r.LastLine, len(r.LastLine), remoteLine)
		}
	}
	if len(sum.Ranks[0].LastLine) != 120 || len(sum.Ranks[1].LastLine) != 119 || sum.Ranks[2].LastLine != "short" {
		t.Errorf("cut lines of %d, %d bytes and %q; want 120, 119, short", len(sum.Ranks[0].LastLine), len(sum.Ranks[1].LastLine), sum.Ranks[2].LastLine)
	}
	if st.Ranks[0].LastLine != long {
		t.Error("summary changed the state's own last line")
	}
	if len(sum.Peers) != 1 || sum.Peers[0].NodeRank != 1 || sum.Peers[0].Ranks != nil {
		t.Errorf("summary peers = %+v; want node 1 alone, gone, without ranks", sum.Peers)
	}
}

func summaryJSON(t *testing.T, st State) []byte {
	t.Helper()
	b, err := json.Marshal(&st)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseSummary(t *testing.T) {
	good := State{Version: Version, RunID: "r", NodeRank: 1, Nodes: 2, Ranks: []Rank{{Rank: 2, Node: 1}}}
	if st, err := ParseSummary(summaryJSON(t, good), "r"); err != nil || st.NodeRank != 1 || len(st.Ranks) != 1 {
		t.Fatalf("ParseSummary(good) = %+v, %v", st, err)
	}
	bad := map[string][]byte{
		"other run":      summaryJSON(t, State{Version: Version, RunID: "s", Nodes: 1}),
		"other version":  summaryJSON(t, State{Version: Version + 1, RunID: "r", Nodes: 1}),
		"rank of node 0": summaryJSON(t, State{Version: Version, RunID: "r", NodeRank: 1, Nodes: 2, Ranks: []Rank{{Node: 0}}}),
		"node rank >= n": summaryJSON(t, State{Version: Version, RunID: "r", NodeRank: 2, Nodes: 2}),
		"too many nodes": summaryJSON(t, State{Version: Version, RunID: "r", Nodes: 1 << 20}),
		"gone set":       summaryJSON(t, State{Version: Version, RunID: "r", Nodes: 1, Gone: true}),
		"live peer":      summaryJSON(t, State{Version: Version, RunID: "r", Nodes: 2, Peers: []State{{RunID: "r", NodeRank: 1}}}),
		"unknown field":  []byte(`{"version":1,"run_id":"r","nodes":1,"evil":1}`),
		"trailing data":  append(summaryJSON(t, State{Version: Version, RunID: "r", Nodes: 1}), []byte(" {}")...),
		"not json":       []byte("status"),
		"over the bound": []byte(`{"version":1,"run_id":"r","nodes":1,"host":"` + strings.Repeat("x", maxSummary) + `"}`),
	}
	for name, rec := range bad {
		if st, err := ParseSummary(rec, "r"); err == nil {
			t.Errorf("%s: ParseSummary = %+v; want an error", name, st)
		}
	}
}

func TestNodes(t *testing.T) {
	gone1 := State{Version: Version, RunID: "r", NodeRank: 1, Nodes: 3, Host: "h1", Updated: time.Unix(5, 0), Gone: true}
	recs := [][]byte{
		summaryJSON(t, State{Version: Version, RunID: "r", NodeRank: 0, Nodes: 3, Ranks: []Rank{{Rank: 0}}, Peers: []State{gone1}}),
		summaryJSON(t, State{Version: Version, RunID: "other", NodeRank: 2, Nodes: 3}),
		[]byte("junk"),
	}
	nodes, bad := Nodes(recs, "r")
	if bad != 2 || len(nodes) != 3 {
		t.Fatalf("Nodes = %+v, %d bad; want 3 nodes, 2 bad records", nodes, bad)
	}
	if nodes[0].Gone || nodes[0].Peers != nil || len(nodes[0].Ranks) != 1 {
		t.Errorf("node 0 = %+v; want it live with its rank, without peers", nodes[0])
	}
	if !nodes[1].Gone || nodes[1].Host != "h1" || nodes[1].Updated.IsZero() {
		t.Errorf("node 1 = %+v; want gone, as node 0 last saw it", nodes[1])
	}
	if !nodes[2].Gone || nodes[2].NodeRank != 2 || !nodes[2].Updated.IsZero() {
		t.Errorf("node 2 = %+v; want gone (no record of its own)", nodes[2])
	}
	if nodes, bad := Nodes(nil, "r"); len(nodes) != 0 || bad != 0 {
		t.Errorf("Nodes(nil) = %+v, %d", nodes, bad)
	}
}

// TestReadsPeers: up to 64 nodes every node reads the peers with each
// Remote call and at the end; above, each node reads them once per
// RemoteEvery*ceil(nodes/64) ticks, the nodes staggered, never at the end:
// the reads a second across the job grow with N, not N².
func TestReadsPeers(t *testing.T) {
	reads := func(nodes, ticks int) (total int, perTick []int) {
		perTick = make([]int, ticks+1)
		for rank := 0; rank < nodes; rank++ {
			for tick := 0; tick < ticks; tick++ {
				if readsPeers(tick, false, nodes, rank) {
					total++
					perTick[tick]++
				}
			}
			if readsPeers(ticks, true, nodes, rank) {
				total++
				perTick[ticks]++
			}
		}
		return total, perTick
	}
	// 8 nodes, 9 ticks: ticks 0, 3, 6 and the last, each node.
	if total, _ := reads(8, 9); total != 8*4 {
		t.Errorf("8 nodes, 9 ticks: %d reads, want %d", total, 8*4)
	}
	for _, nodes := range []int{128, 1024, 4096} {
		every := RemoteEvery * ((nodes + 63) / 64)
		ticks := 2 * every
		total, perTick := reads(nodes, ticks)
		if total != 2*nodes {
			t.Errorf("%d nodes, %d ticks: %d reads, want 2 a node (%d)", nodes, ticks, total, 2*nodes)
		}
		// Staggered: no tick has more than ceil(nodes/every) readers, and
		// the last has none.
		for tick, n := range perTick {
			if n > (nodes+every-1)/every || tick == ticks && n != 0 {
				t.Errorf("%d nodes: tick %d has %d readers", nodes, tick, n)
			}
		}
		// Requests a second (a read is nodes/16 requests), per node:
		// bounded whatever N.
		if rate := float64(total) * float64(nodes) / 16 / float64(ticks) / float64(nodes); rate > 1.5 {
			t.Errorf("%d nodes: %.2f status requests a second a node", nodes, rate)
		}
	}
}
