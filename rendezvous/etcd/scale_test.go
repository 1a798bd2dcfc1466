//go:build linux

package etcd

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/mpspawn/mpspawn/internal/etcdtest"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// This file simulates many nodes in one process against a real etcd: each
// node has its own client, connection and lease, as separate launchers
// would. It uses the package's public API only (New, Next, Fail, Stopped,
// Finish, End, Close), so that the same benchmark measures any protocol
// behind it.

var (
	scaleNodes = flag.String("scale.nodes", "16,64,256,1024", "BenchmarkScale: the node counts, comma-separated")
	// scaleTimeout bounds one simulated job (join, run, close) of
	// BenchmarkScale, and each node's JoinTimeout and CloseTimeout.
	scaleTimeout = flag.Duration("scale.timeout", 10*time.Minute, "BenchmarkScale: the bound on each job")
	// scaleTTL is longer than a launcher's default (5 s): the simulated
	// nodes share this process's CPUs, so that a burst of the others'
	// work can delay one node's keep-alive longer than separate
	// launchers' would be, and its lease expire (a lost node). The
	// figure leases-expired counts those.
	scaleTTL = flag.Duration("scale.ttl", 30*time.Second, "BenchmarkScale: each node's lease TTL")
)

// dialParallel is how many simulated nodes connect to etcd at once.
const dialParallel = 32

// cluster is a job's simulated nodes.
type cluster struct {
	nodes []*Rendezvous
}

// newCluster connects n nodes of run runID (n of n nodes, one rank each) to
// srv, dialParallel at a time, each with its own client and lease.
func newCluster(ctx context.Context, tb testing.TB, srv *etcdtest.Server, runID string, n int, tune func(*Config)) *cluster {
	tb.Helper()
	c := &cluster{nodes: make([]*Rendezvous, n)}
	errs := make([]error, n)
	sem := make(chan struct{}, dialParallel)
	var wg sync.WaitGroup
	for i := range n {
		sem <- struct{}{}
		wg.Go(func() {
			defer func() { <-sem }()
			addr := fmt.Sprintf("127.%d.%d.%d", 1+i>>16, (i>>8)&255, i&255)
			cfg := Config{Endpoints: []string{srv.Endpoint}, RunID: runID, MinNodes: n, MaxNodes: n, NProc: 1,
				LocalAddr: addr, Host: "host-" + addr, JoinTimeout: *scaleTimeout, CloseTimeout: *scaleTimeout, LeaseTTL: *scaleTTL}
			if tune != nil {
				tune(&cfg)
			}
			c.nodes[i], errs[i] = New(ctx, cfg)
		})
	}
	wg.Wait()
	tb.Cleanup(c.close)
	if err := firstErr(errs); err != nil {
		tb.Fatalf("connect %d nodes: %v", n, err)
	}
	return c
}

// close closes every node, all at once, as the launchers of a job that
// ended would.
func (c *cluster) close() {
	var wg sync.WaitGroup
	for _, e := range c.nodes {
		if e != nil {
			wg.Go(func() { e.Close() })
		}
	}
	wg.Wait()
}

// next calls Next on nodes[from:to] at once; done receives each node's index
// as its Next returns, and the returned func waits for them all and gives
// their rounds' errors.
func (c *cluster) next(ctx context.Context, from, to int, rounds []rendezvous.Round, done chan<- int) func() error {
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i := from; i < to; i++ {
		wg.Go(func() {
			rounds[i], errs[i] = c.nodes[i].Next(ctx)
			if done != nil {
				done <- i
			}
		})
	}
	return func() error { wg.Wait(); return firstErr(errs) }
}

// checkRounds checks that rounds are one round of len(rounds) nodes of one
// rank each, with a distinct node rank per node and one master.
func checkRounds(rounds []rendezvous.Round) error {
	seen := make([]bool, len(rounds))
	for i, r := range rounds {
		if r.NNodes != len(rounds) || r.WorldSize != len(rounds) || r.NodeRank < 0 || r.NodeRank >= len(rounds) || seen[r.NodeRank] {
			return fmt.Errorf("node %d: round %+v; want %d nodes, a node rank of its own", i, r.Membership, len(rounds))
		}
		seen[r.NodeRank] = true
		if r.MasterAddr != rounds[0].MasterAddr || r.MasterPort != rounds[0].MasterPort || r.FirstRank != r.NodeRank {
			return fmt.Errorf("node %d: round %+v; want node 0's master %s:%d and first rank %d", i, r.Membership, rounds[0].MasterAddr, rounds[0].MasterPort, r.NodeRank)
		}
	}
	return nil
}

// finish calls Finish on every node at once (every node's ranks
// succeeded), then End, as node 0's launcher does.
func (c *cluster) finish(ctx context.Context) error {
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	for i, e := range c.nodes {
		wg.Go(func() {
			s, err := e.Finish(ctx)
			if err == nil && s != nil {
				err = fmt.Errorf("node %d: Finish = %+v; want every node done", i, s)
			}
			errs[i] = err
		})
	}
	wg.Wait()
	if err := firstErr(errs); err != nil {
		return err
	}
	return c.nodes[0].End(ctx, "succeeded")
}

// failOne publishes a failure on node i and waits until every other node
// has it on Stopped; it returns how long the last one took.
func (c *cluster) failOne(ctx context.Context, i int) (time.Duration, error) {
	var mu sync.Mutex
	var last time.Duration
	errs := make([]error, len(c.nodes))
	var wg sync.WaitGroup
	start := time.Now()
	for j, e := range c.nodes {
		if j == i {
			continue
		}
		stopped := e.Stopped()
		wg.Go(func() {
			select {
			case s := <-stopped:
				d := time.Since(start)
				if s.Failure == nil || s.Failure.ExitCode != 9 {
					errs[j] = fmt.Errorf("node %d: stop %+v; want node %d's failure", j, s, i)
				}
				mu.Lock()
				last = max(last, d)
				mu.Unlock()
			case <-ctx.Done():
				errs[j] = fmt.Errorf("node %d: no stop: %w", j, ctx.Err())
			}
		})
	}
	if _, err := c.nodes[i].Fail(ctx, rendezvous.Failure{Rank: i, ExitCode: 9, Message: "scale", Time: time.Now()}); err != nil {
		return 0, err
	}
	wg.Wait()
	return last, firstErr(errs)
}

// TestEtcdManyNodes: 64 nodes, each its own client and lease, form one
// round with distinct node ranks, all hear one node's failure, form the
// next round with one restart, finish it and close the run, all within a
// generous bound (no figure on speed: that is BenchmarkScale's).
func TestEtcdManyNodes(t *testing.T) {
	const n = 64
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	c := newCluster(ctx, t, srv, "many", n, func(cfg *Config) { cfg.LeaseTTL = 10 * time.Second })
	rounds := make([]rendezvous.Round, n)
	if err := c.next(ctx, 0, n, rounds, nil)(); err != nil {
		t.Fatalf("first round: %v", err)
	}
	if err := checkRounds(rounds); err != nil {
		t.Fatalf("first round: %v", err)
	}
	if _, err := c.failOne(ctx, n/2); err != nil {
		t.Fatalf("failure: %v", err)
	}
	if err := c.next(ctx, 0, n, rounds, nil)(); err != nil {
		t.Fatalf("second round: %v", err)
	}
	if err := checkRounds(rounds); err != nil {
		t.Fatalf("second round: %v", err)
	}
	for i, r := range rounds {
		if r.Restart != 1 {
			t.Fatalf("node %d: second round's restart count %d; want 1", i, r.Restart)
		}
	}
	if err := c.finish(ctx); err != nil {
		t.Fatalf("finish: %v", err)
	}
}

// BenchmarkScale simulates jobs of N nodes (-scale.nodes, default
// 16,64,256,1024) in this process, each node its own etcd client and lease,
// against a fresh etcd per N, and reports per job:
//
//	form-ms        the round's forming, from the last node's Next (the
//	               others have joined and etcd is quiet) until every node
//	               has the round
//	fail-ms        one node's Fail until every other node has it on Stopped
//	events/node    watch events etcd sent for the whole job (connect, join,
//	               finish, End, close), per node
//	watchmsgs/node watch responses (gRPC messages) etcd sent, per node
//	reqs/node      requests etcd received, per node: every gRPC message but
//	               the lease keep-alives, which depend on the job's length
//	failevents/node watch events sent from Fail until every node has it
//	etcd-cpu-s     etcd's CPU (user+system) for the job
//	etcd-rss-MB    etcd's resident memory after the job (and its peak)
//
// Run: go test -run '^$' -bench BenchmarkScale -benchtime 1x -timeout 60m ./rendezvous/etcd
// (bench/rdzvscale.py prints the same as one table).
func BenchmarkScale(b *testing.B) {
	raiseNoFile(b)
	for _, f := range strings.Split(*scaleNodes, ",") {
		n, err := strconv.Atoi(strings.TrimSpace(f))
		if err != nil || n < 2 {
			b.Fatalf("-scale.nodes: %q is not a node count of at least 2", f)
		}
		b.Run(fmt.Sprintf("nodes=%d", n), func(b *testing.B) { benchScale(b, n) })
	}
}

// scaleFigures are one job's figures.
type scaleFigures struct {
	form, fail                          time.Duration
	expired                             float64
	events, watchMsgs, reqs, failEvents float64
	cpu                                 time.Duration
}

func benchScale(b *testing.B, n int) {
	srv := etcdtest.Start(b)
	var sum scaleFigures
	jobs := 0
	for b.Loop() { // ns/op: both jobs, connects and closes included
		f := scaleJob(b, srv, n, jobs)
		sum.form += f.form
		sum.fail += f.fail
		sum.events += f.events
		sum.watchMsgs += f.watchMsgs
		sum.reqs += f.reqs
		sum.failEvents += f.failEvents
		sum.cpu += f.cpu
		sum.expired += f.expired
		jobs++
	}
	k := float64(jobs)
	b.ReportMetric(float64(sum.form.Microseconds())/1e3/k, "form-ms")
	b.ReportMetric(float64(sum.fail.Microseconds())/1e3/k, "fail-ms")
	b.ReportMetric(sum.events/k, "events/node")
	b.ReportMetric(sum.watchMsgs/k, "watchmsgs/node")
	b.ReportMetric(sum.reqs/k, "reqs/node")
	b.ReportMetric(sum.failEvents/k, "failevents/node")
	b.ReportMetric(sum.cpu.Seconds()/k, "etcd-cpu-s")
	b.ReportMetric(sum.expired/k, "leases-expired")
	rss, peak := procMem(b, srv.Pid())
	b.ReportMetric(float64(rss)/(1<<20), "etcd-rss-MB")
	b.ReportMetric(float64(peak)/(1<<20), "etcd-peak-MB")
}

// scaleJob runs two jobs of n nodes on srv: one that forms, finishes and
// closes (the form time and the whole job's traffic), and one that forms
// and fails (the failure's fan-out).
func scaleJob(b *testing.B, srv *etcdtest.Server, n, job int) scaleFigures {
	ctx, cancel := context.WithTimeout(context.Background(), *scaleTimeout)
	defer cancel()
	var f scaleFigures
	m0, cpu0 := readMetrics(b, srv), procCPU(b, srv.Pid())
	c := newCluster(ctx, b, srv, fmt.Sprintf("ok-%d", job), n, nil)
	rounds := make([]rendezvous.Round, n)
	done := make(chan int, n) // every node's Next returned
	waitFirst := c.next(ctx, 0, n-1, rounds, done)
	waitQuiet(ctx, b, srv)
	start := time.Now()
	waitLast := c.next(ctx, n-1, n, rounds, done)
	for range n {
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	f.form = time.Since(start)
	if err := firstErr([]error{waitFirst(), waitLast()}); err != nil {
		m := readMetrics(b, srv)
		b.Fatalf("%d nodes: round: %v\n(etcd: %.0f leases expired, %.0f watch events sent)", n, err,
			m.sum("etcd_debugging_server_lease_expired_total", ""), m.sum("etcd_debugging_mvcc_events_total", ""))
	}
	if err := checkRounds(rounds); err != nil {
		b.Fatalf("%d nodes: %v", n, err)
	}
	if err := c.finish(ctx); err != nil {
		b.Fatalf("%d nodes: finish: %v", n, err)
	}
	c.close()
	m1 := readMetrics(b, srv)
	f.cpu = procCPU(b, srv.Pid()) - cpu0
	f.events = (m1.sum("etcd_debugging_mvcc_events_total", "") - m0.sum("etcd_debugging_mvcc_events_total", "")) / float64(n)
	f.watchMsgs = (m1.sum("grpc_server_msg_sent_total", `grpc_method="Watch"`) - m0.sum("grpc_server_msg_sent_total", `grpc_method="Watch"`)) / float64(n)
	f.reqs = (m1.requests() - m0.requests()) / float64(n)
	f.expired = m1.sum("etcd_debugging_server_lease_expired_total", "") - m0.sum("etcd_debugging_server_lease_expired_total", "")

	fc := newCluster(ctx, b, srv, fmt.Sprintf("fail-%d", job), n, nil)
	if err := fc.next(ctx, 0, n, rounds, nil)(); err != nil {
		b.Fatalf("%d nodes: round: %v", n, err)
	}
	waitQuiet(ctx, b, srv)
	m2 := readMetrics(b, srv)
	fail, err := fc.failOne(ctx, n/2)
	if err != nil {
		b.Fatalf("%d nodes: failure: %v", n, err)
	}
	f.fail = fail
	f.failEvents = (readMetrics(b, srv).sum("etcd_debugging_mvcc_events_total", "") - m2.sum("etcd_debugging_mvcc_events_total", "")) / float64(n)
	if err := fc.nodes[0].End(ctx, "failed"); err != nil {
		b.Fatal(err)
	}
	fc.close()
	return f
}

// raiseNoFile raises this process's open-file limit to its hard limit, and
// so the etcd server's (it inherits it): a simulated node holds a client
// connection and a port reservation, the server one socket per node.
func raiseNoFile(tb testing.TB) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
	lim.Cur = lim.Max
	if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		tb.Fatal(err)
	}
}

// metrics are etcd's /metrics samples, by name and labels as written.
type metrics map[string]float64

// sum adds the samples of metric name whose labels contain label ("" for
// all).
func (m metrics) sum(name, label string) float64 {
	t := 0.0
	for k, v := range m {
		base, labels, _ := strings.Cut(k, "{")
		if base == name && strings.Contains(labels, label) {
			t += v
		}
	}
	return t
}

// requests is every gRPC message etcd received but the lease keep-alives.
func (m metrics) requests() float64 {
	return m.sum("grpc_server_msg_received_total", "") - m.sum("grpc_server_msg_received_total", `grpc_method="LeaseKeepAlive"`)
}

func readMetrics(tb testing.TB, srv *etcdtest.Server) metrics {
	tb.Helper()
	resp, err := http.Get("http://" + srv.Endpoint + "/metrics")
	if err != nil {
		tb.Fatalf("etcd metrics: %v", err)
	}
	defer resp.Body.Close()
	m := metrics{}
	sc := bufio.NewScanner(resp.Body)
	for sc.Scan() {
		line := sc.Text()
		if line == "" || line[0] == '#' {
			continue
		}
		i := strings.LastIndexByte(line, ' ')
		if i < 0 {
			continue
		}
		if v, err := strconv.ParseFloat(line[i+1:], 64); err == nil {
			m[line[:i]] = v
		}
	}
	if err := sc.Err(); err != nil {
		tb.Fatalf("etcd metrics: %v", err)
	}
	return m
}

// waitQuiet waits until etcd has sent no watch event and received no write
// for 300 ms: the nodes that joined have taken in each other's joins.
func waitQuiet(ctx context.Context, tb testing.TB, srv *etcdtest.Server) {
	tb.Helper()
	probe := func() float64 {
		m := readMetrics(tb, srv)
		return m.sum("etcd_debugging_mvcc_events_total", "") + m.requests()
	}
	last, still := probe(), 0
	for still < 3 {
		select {
		case <-ctx.Done():
			tb.Fatalf("etcd never went quiet: %v", ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
		if v := probe(); v != last {
			last, still = v, 0
		} else {
			still++
		}
	}
}

// procCPU is process pid's user and system CPU time so far.
func procCPU(tb testing.TB, pid int) time.Duration {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		tb.Fatal(err)
	}
	// Fields after the command's closing parenthesis; utime and stime
	// are the stat file's 14th and 15th fields.
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	const clkTck = 100 // sysconf(_SC_CLK_TCK) on Linux
	return time.Duration(ut+st) * time.Second / clkTck
}

// procMem is process pid's resident memory now and at its peak, in bytes.
func procMem(tb testing.TB, pid int) (rss, peak int64) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		tb.Fatal(err)
	}
	for _, line := range strings.Split(string(b), "\n") {
		k, v, _ := strings.Cut(line, ":")
		kb, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
		switch k {
		case "VmRSS":
			rss = kb << 10
		case "VmHWM":
			peak = kb << 10
		}
	}
	return rss, peak
}

// firstErr is the first of errs and how many there are: a thousand nodes'
// errors are one error a thousand times.
func firstErr(errs []error) error {
	var first error
	n := 0
	for _, err := range errs {
		if err != nil {
			if first == nil {
				first = err
			}
			n++
		}
	}
	if n > 1 {
		return fmt.Errorf("%w (and %d more errors)", first, n-1)
	}
	return first
}
