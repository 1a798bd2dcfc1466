package live

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"sync"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
)

// Interval is how often a Publisher samples the ranks and writes its file.
const Interval = time.Second

// RemoteEvery is how many intervals pass between two Remote calls.
const RemoteEvery = 3

// remoteLine bounds each rank's last line in what Remote gets.
const remoteLine = 120

// peerNodes is the job size up to which every node reads the peers at
// each Remote call and once more when its ranks have exited. A read of
// the peers costs the rendezvous about one request per 16 nodes, so that
// above it the reads come less often as the job grows (readsPeers).
const peerNodes = 64

// readsPeers reports whether the sampler's tick (counted from 0; last:
// the ranks have exited) reads the peers, for node nodeRank of nodes. Up
// to peerNodes nodes: at every Remote call, and at the last tick. Above:
// every RemoteEvery*ceil(nodes/peerNodes) ticks, staggered by node rank,
// and not at the last tick, so that the nodes together make about the
// same number of requests a second per node whatever the job's size (O(N)
// in all, not O(N²)), with no burst at the job's start or end; the peers
// are then up to that many seconds old (48 s at 1,024 nodes).
func readsPeers(tick int, last bool, nodes, nodeRank int) bool {
	if nodes <= peerNodes {
		return last || tick%RemoteEvery == 0
	}
	every := RemoteEvery * ((nodes + peerNodes - 1) / peerNodes)
	return !last && (tick+nodeRank)%every == 0
}

// A Publisher publishes one launcher's job (State) while its ranks run:
// Attach starts sampling a Group (each round's, in turn), Close removes
// the file. Its zero value is not usable; fill Info and call Open.
type Publisher struct {
	// Info is the job's identity, copied into every State (Ranks, Updated,
	// Attempt, Version, Pid and StartTicks are the Publisher's).
	Info State
	// Remote, when not nil, gets the State as JSON every few intervals
	// (RemoteEvery), its last lines cut short: the node's summary that
	// other nodes show. Its error is ignored; the next call tries again.
	Remote func(ctx context.Context, summary []byte) error
	// Peers, when not nil, returns every node's summary (what their
	// Remote published), read with Remote's calls in jobs of up to 64
	// nodes and less often in larger ones (readsPeers); the other nodes'
	// go into State.Peers, and a node that was there and is no more stays
	// as Gone.
	Peers func(ctx context.Context) ([][]byte, error)

	dir   string
	peers []State // the other nodes as last read, kept from round to round (one sampler at a time)
}

// Open makes the state directory (see the package doc) and readies p.
// Nothing is written until Attach.
func (p *Publisher) Open() error {
	dir, err := stateDir()
	if err != nil {
		return err
	}
	p.dir = dir
	p.Info.Version, p.Info.Pid, p.Info.StartTicks = Version, os.Getpid(), StartTicks(os.Getpid())
	if p.Info.Started.IsZero() {
		p.Info.Started = time.Now()
	}
	return nil
}

// Path is the file p writes.
func (p *Publisher) Path() string { return fileName(p.dir, p.Info.Pid) }

// Attach publishes g's ranks, as attempt (restarts spent), every Interval
// from now until detach is called: call it once the ranks have started,
// so that it adds nothing to their start. It publishes once before it
// returns. detach stops sampling and, when other nodes read this one
// (Remote), publishes the ranks' last state; a single node's file is
// removed at the end anyway (Close), and its last tick would only add to
// the job's end.
func (p *Publisher) Attach(ctx context.Context, g *launcher.Group, attempt int) (detach func()) {
	ctx, cancel := context.WithCancel(ctx)
	s := &sampler{p: p, g: g, attempt: attempt}
	s.tick(ctx, time.Now(), false)
	done := make(chan struct{})
	go func() {
		defer close(done)
		t := time.NewTicker(Interval)
		defer t.Stop()
		for {
			select {
			case now := <-t.C:
				s.tick(ctx, now, false)
			case <-ctx.Done():
				return
			}
		}
	}()
	var once sync.Once
	return func() {
		once.Do(func() {
			cancel()
			<-done
			if p.Remote == nil {
				return
			}
			// Bounded: etcd may be what is gone.
			fctx, fcancel := context.WithTimeout(context.Background(), 2*time.Second)
			defer fcancel()
			s.tick(fctx, time.Now(), true)
		})
	}
}

// Close removes p's file.
func (p *Publisher) Close() {
	if p.dir != "" {
		_ = os.Remove(p.Path())
	}
}

// sampler is one Attach's state between ticks.
type sampler struct {
	p       *Publisher
	g       *launcher.Group
	attempt int
	snap    []launcher.RankState
	prev    []procSample // by index in snap
	state   State
	ages    []float64
	buf     [1024]byte
	ticks   int
}

// procSample is a rank's CPU time when last sampled.
type procSample struct {
	pid   int
	ticks uint64
	at    time.Time
}

// tick samples the ranks and writes the file (and, every RemoteEvery
// ticks, calls Remote; it reads the peers as readsPeers says, last being
// the tick once the ranks have exited).
func (s *sampler) tick(ctx context.Context, now time.Time, last bool) {
	s.snap = s.g.Snapshot(s.snap)
	if len(s.prev) != len(s.snap) {
		s.prev = make([]procSample, len(s.snap))
	}
	s.state = s.p.Info
	s.state.Attempt, s.state.Updated, s.state.IntervalMS = s.attempt, now, int(Interval/time.Millisecond)
	s.state.Ranks = slices.Grow(s.state.Ranks[:0], len(s.snap))
	for i := range s.snap {
		s.state.Ranks = append(s.state.Ranks, s.rank(i, now))
	}
	s.ages = markStragglers(s.state.Ranks, s.ages)
	if s.p.Remote != nil && s.ticks%RemoteEvery == 0 {
		if sum, err := json.Marshal(summary(&s.state, s.p.peers)); err == nil {
			_ = s.p.Remote(ctx, sum)
		}
	}
	if readsPeers(s.ticks, last, s.p.Info.Nodes, s.p.Info.NodeRank) {
		s.readPeers(ctx)
	}
	s.ticks++
	s.state.Peers = s.p.peers
	data, err := json.Marshal(&s.state)
	if err != nil {
		return
	}
	_ = writeFile(s.p.dir, s.p.Info.Pid, data)
}

// rank is rank i of the snapshot, sampled.
func (s *sampler) rank(i int, now time.Time) Rank {
	st := &s.snap[i]
	r := Rank{Rank: st.Rank, LocalRank: st.LocalRank, Node: s.p.Info.NodeRank, Pid: st.Pid, LastLine: st.LastLine, Restarts: s.attempt}
	last := st.LastOutput
	if last.IsZero() {
		last = st.Started
	}
	r.OutputAgeS = roundTenth(now.Sub(last).Seconds())
	if st.Exited {
		exitOf(&r, st)
		return r
	}
	ps, ok := readStat(st.Pid, s.buf[:])
	if !ok {
		r.State = "unknown"
		return r
	}
	r.State, r.Threads, r.RSSBytes = stateName(ps.state), ps.threads, ps.rssPages*pageSize
	cur := procSample{pid: st.Pid, ticks: ps.ticks, at: now}
	r.CPUPercent = cpuPercent(s.prev[i], cur)
	s.prev[i] = cur
	return r
}

// cpuPercent is the CPU a process used between two samples, in percent
// of one core, to a tenth; 0 when prev is not an earlier sample of the
// same process.
func cpuPercent(prev, cur procSample) float64 {
	if prev.pid != cur.pid || !cur.at.After(prev.at) || cur.ticks < prev.ticks {
		return 0
	}
	used := float64(cur.ticks-prev.ticks) / clockTicks
	return roundTenth(100 * used / cur.at.Sub(prev.at).Seconds())
}

func roundTenth(v float64) float64 { return float64(int64(v*10+0.5)) / 10 }

// summary is st as Remote gets it: each last line cut to 120 bytes, and
// the peers seen gone.
func summary(st *State, peers []State) *State {
	sum := *st
	sum.Peers = goneOnly(peers)
	sum.Ranks = make([]Rank, len(st.Ranks))
	for i, r := range st.Ranks {
		if len(r.LastLine) > remoteLine {
			r.LastLine = cutString(r.LastLine, remoteLine)
		}
		sum.Ranks[i] = r
	}
	return &sum
}

// cutString cuts s to at most n bytes, at a rune boundary.
func cutString(s string, n int) string {
	for n > 0 && n < len(s) && s[n]&0xC0 == 0x80 {
		n--
	}
	return s[:n]
}

// sortByPid sorts states by launcher pid.
func sortByPid(sts []*State) {
	slices.SortFunc(sts, func(a, b *State) int { return a.Pid - b.Pid })
}

// readPeers reads the other nodes' summaries: each must parse as a State
// of this run and version; a node seen before and missing now is kept,
// Gone.
func (s *sampler) readPeers(ctx context.Context) {
	if s.p.Peers == nil {
		return
	}
	recs, err := s.p.Peers(ctx)
	if err != nil {
		return // kept as last read; tried again next time
	}
	seen := map[int]bool{}
	var peers []State
	for _, rec := range recs {
		st, err := ParseSummary(rec, s.p.Info.RunID)
		if err != nil || st.NodeRank == s.p.Info.NodeRank || seen[st.NodeRank] {
			continue
		}
		st.Peers = nil
		seen[st.NodeRank] = true
		peers = append(peers, st)
	}
	for _, old := range s.p.peers {
		if !seen[old.NodeRank] {
			old.Gone, old.Ranks = true, nil
			peers = append(peers, old)
		}
	}
	slices.SortFunc(peers, func(a, b State) int { return a.NodeRank - b.NodeRank })
	s.p.peers = peers
}
