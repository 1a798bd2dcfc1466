package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/launcher/job"
	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd"
	"github.com/urfave/cli/v2"
)

// Flags of multi-node jobs, spelled as torchrun spells them.
const (
	fRdzvBackend  = "rdzv-backend"
	fRdzvEndpoint = "rdzv-endpoint"
	fRdzvID       = "rdzv-id"
	fRdzvConf     = "rdzv-conf"
	fMaxRestarts  = "max-restarts"
	fLocalAddr    = "local-addr"
)

func multinodeFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Category: catRendezvous, Name: fRdzvBackend, Value: "static", Usage: "`BACKEND` that finds the nodes: static (--nnodes, --node-rank, --master-addr), etcd (an etcd v3 cluster at --rdzv-endpoint) or c10d (as etcd, with the etcd server run by the node at --rdzv-endpoint)"},
		&cli.StringFlag{Category: catRendezvous, Name: fRdzvEndpoint, Usage: "`HOST:PORT[,HOST:PORT...]` of the rendezvous (the etcd servers)"},
		&cli.StringFlag{Category: catRendezvous, Name: fRdzvID, Usage: "the run's `ID`, the same on every node (TORCHELASTIC_RUN_ID); required with etcd and c10d on more than one node"},
		&cli.StringFlag{Category: catRendezvous, Name: fRdzvConf, Usage: "rendezvous settings `K=V,...`: join_timeout (600s), last_call_timeout (30s), close_timeout (30s), lease_ttl (5s), connect_timeout (5s), cacert, cert, key (TLS files), etcd_binary, token (c10d: a FILE holding the store's secret; or $MPSPAWN_RDZV_TOKEN)"},
		&cli.StringFlag{Category: catRendezvous, Name: fLocalAddr, Usage: "`ADDR` the other nodes reach this node by (MASTER_ADDR when it is node 0); default: this host's name"},
		&cli.IntFlag{Category: catFailure, Name: fMaxRestarts, Value: 0, Usage: "restart every node's ranks up to `N` times after a failure (the job's budget, not each node's)"},
	}
}

// multinode is the validated multi-node part of the command line.
type multinode struct {
	backend            string // static, etcd or c10d
	endpoints          []string
	minNodes, maxNodes int
	maxRestarts        int
	localAddr          string
	position           int // --node-position: the node's line of a driver's host list, from 1; 0 none
	conf               rdzvConf
	tls                *tls.Config // from conf's files; nil without TLS
}

// rdzvConf is --rdzv-conf.
type rdzvConf struct {
	join, lastCall, close, lease, connect time.Duration
	cacert, cert, key                     string
	etcdBinary                            string
	token                                 string // c10d: the store's token (the file's content)
}

// dynamic reports whether the nodes meet through etcd.
func (m *multinode) dynamic() bool { return m.backend == "etcd" || m.backend == "c10d" }

// parseNNodes reads --nnodes: N, or MIN:MAX with a dynamic backend.
func parseNNodes(c *cli.Context) (minN, maxN int, err error) {
	v := c.String(fNNodes)
	lo, hi, ranged := strings.Cut(v, ":")
	minN, err1 := strconv.Atoi(lo)
	maxN, err2 := minN, error(nil)
	if ranged {
		maxN, err2 = strconv.Atoi(hi)
	}
	switch {
	case err1 != nil || err2 != nil:
		return 0, 0, usagef("--nnodes %q: want a number of nodes, or MIN:MAX", v)
	case ranged && (minN < 1 || maxN < minN):
		return 0, 0, usagef("--nnodes %q: want MIN:MAX with 1 <= MIN <= MAX", v)
	case ranged && minN != maxN && !slices.Contains([]string{"etcd", "c10d"}, c.String(fRdzvBackend)):
		return 0, 0, usagef("--nnodes %s: a range of nodes (elastic MIN:MAX) needs --rdzv-backend etcd or c10d", v)
	}
	return minN, maxN, nil
}

// parseMultinode validates the multi-node flags into cfg.multi, after
// parseConfig has read --nnodes into cfg.rdzv.
func (cfg *config) parseMultinode(c *cli.Context) error {
	m := &cfg.multi
	m.backend = c.String(fRdzvBackend)
	switch m.backend {
	case "static", "etcd", "c10d":
	case "etcd-v2":
		return usagef("--rdzv-backend etcd-v2: the etcd v2 API is not supported; use --rdzv-backend etcd (etcd v3, any etcd since 3.4)")
	default:
		return usagef("--rdzv-backend %q: want static, etcd or c10d", m.backend)
	}
	var err error
	if m.minNodes, m.maxNodes, err = parseNNodes(c); err != nil {
		return err
	}
	slurm := cfg.sched != nil && cfg.sched.slurm != nil
	if slurm && !c.IsSet(fNNodes) {
		m.minNodes, m.maxNodes = cfg.rdzv.NNodes, cfg.rdzv.NNodes // the step's nodes
	}
	if m.maxRestarts = c.Int(fMaxRestarts); m.maxRestarts < 0 {
		return usagef("--max-restarts %d: want 0 or more", m.maxRestarts)
	}
	if m.conf, err = parseRdzvConf(c.String(fRdzvConf)); err != nil {
		return err
	}
	if id := c.String(fRdzvID); id != "" {
		if c.IsSet(fRunID) && c.String(fRunID) != id {
			return usagef("--rdzv-id %s and --run-id %s differ: give one of them", id, c.String(fRunID))
		}
		cfg.runID = id
	}
	m.localAddr = c.String(fLocalAddr)
	if strings.ContainsFunc(m.localAddr, func(r rune) bool { return r == '/' || r == ',' || r <= ' ' }) {
		return usagef("--local-addr %q: want a host name or IP address", m.localAddr)
	}
	if err := m.checkToken(); err != nil {
		return err
	}
	if err := m.parsePosition(c); err != nil {
		return err
	}
	ep := c.String(fRdzvEndpoint)
	if !m.dynamic() {
		return cfg.staticEndpoint(c, ep)
	}
	if c.Bool(fStandalone) {
		return usagef("--standalone runs one node on its own and cannot take --rdzv-backend %s: drop one of them", m.backend)
	}
	if m.maxNodes == 1 && (ep == "" || m.backend == "c10d") {
		// One node needs no server: it runs as --standalone does.
		m.backend = "static"
		cfg.rdzv.Standalone, cfg.rdzv.MasterPort, cfg.rdzv.MasterAddr = true, 0, ""
		return nil
	}
	if ep == "" {
		return usagef("--rdzv-backend %s needs --rdzv-endpoint HOST:PORT (the etcd servers)", m.backend)
	}
	if err := m.clientSetup(ep); err != nil {
		return err
	}
	if !c.IsSet(fRdzvID) && !c.IsSet(fRunID) && !slurm { // under SLURM: <job>.<step>
		return usagef("--rdzv-backend %s needs --rdzv-id ID: every node of the job passes the same one", m.backend)
	}
	cfg.rdzv.NNodes = m.maxNodes
	cfg.rdzv.NodeRank = 0 // given by the rendezvous
	return nil
}

// parsePosition reads the hidden --node-position a driver gives each
// node of its host list: from 1 to the number of nodes, with etcd or c10d.
func (m *multinode) parsePosition(c *cli.Context) error {
	if !c.IsSet(fNodePosition) {
		return nil
	}
	m.position = c.Int(fNodePosition)
	switch {
	case !m.dynamic():
		return usagef("--%s goes with --rdzv-backend etcd or c10d (static: give --node-rank)", fNodePosition)
	case m.position < 1 || m.position > m.maxNodes:
		return usagef("--%s %d: want 1 to %d (--nnodes)", fNodePosition, m.position, m.maxNodes)
	}
	return nil
}

// checkToken refuses a token with a backend other than c10d.
func (m *multinode) checkToken() error {
	if m.conf.token != "" && m.backend != "c10d" {
		return usagef("--rdzv-conf token: only --rdzv-backend c10d takes a token (it protects the etcd server a node hosts); with --rdzv-backend %s use the etcd's own authentication and TLS (cacert, cert, key)", m.backend)
	}
	return nil
}

// clientSetup reads what an etcd client of the run needs, after m.backend
// and m.conf: the endpoints ep, c10d's token from the environment when
// --rdzv-conf has none, and the TLS configuration. The nodes of a job
// and mpspawn status --rdzv-endpoint share it.
func (m *multinode) clientSetup(ep string) error {
	for _, e := range strings.Split(ep, ",") {
		host, port, err := net.SplitHostPort(strings.TrimSpace(e))
		if p, perr := strconv.Atoi(port); err != nil || perr != nil || host == "" || p < 1 || p > 65535 {
			return usagef("--rdzv-endpoint %q: %q is not HOST:PORT", ep, e)
		}
		m.endpoints = append(m.endpoints, strings.TrimSpace(e))
	}
	if m.backend == "c10d" && len(m.endpoints) != 1 {
		return usagef("--rdzv-backend c10d takes one --rdzv-endpoint HOST:PORT (the node that runs the etcd server); for an etcd cluster use --rdzv-backend etcd")
	}
	if m.backend == "c10d" && m.conf.token == "" {
		m.conf.token = strings.TrimSpace(os.Getenv(envRdzvToken))
	}
	var err error
	m.tls, err = m.conf.tlsConfig()
	return err
}

// staticEndpoint reads torchrun's static --rdzv-endpoint: the master's
// HOST[:PORT], when --master-addr does not say.
func (cfg *config) staticEndpoint(c *cli.Context, ep string) error {
	if ep == "" {
		return nil
	}
	host, port, err := net.SplitHostPort(ep)
	if err != nil {
		host, port = ep, ""
	}
	if !c.IsSet(fMasterAddr) {
		cfg.rdzv.MasterAddr = host
	}
	if port != "" && !c.IsSet(fMasterPort) {
		p, err := strconv.Atoi(port)
		if err != nil || p < 1 || p > 65535 {
			return usagef("--rdzv-endpoint %q: want HOST:PORT", ep)
		}
		cfg.rdzv.MasterPort = p
	}
	return nil
}

// parseRdzvConf reads --rdzv-conf's K=V pairs.
func parseRdzvConf(v string) (rdzvConf, error) {
	conf := rdzvConf{join: etcd.DefaultJoinTimeout, lastCall: etcd.DefaultLastCallTimeout,
		close: etcd.DefaultCloseTimeout, lease: etcd.DefaultLeaseTTL, connect: etcd.DefaultConnectTimeout}
	if v == "" {
		return conf, nil
	}
	durations := map[string]*time.Duration{
		"join_timeout": &conf.join, "last_call_timeout": &conf.lastCall, "close_timeout": &conf.close,
		"lease_ttl": &conf.lease, "connect_timeout": &conf.connect,
	}
	files := map[string]*string{"cacert": &conf.cacert, "cert": &conf.cert, "key": &conf.key, "etcd_binary": &conf.etcdBinary}
	for _, kv := range strings.Split(v, ",") {
		k, val, ok := strings.Cut(strings.TrimSpace(kv), "=")
		switch {
		case !ok || k == "":
			return conf, usagef("--rdzv-conf %q: %q is not KEY=VALUE", v, kv)
		case durations[k] != nil:
			d, err := parseSeconds(val)
			if err != nil || d <= 0 {
				return conf, usagef("--rdzv-conf %s=%s: want a positive duration (seconds, or such as 30s, 500ms)", k, val)
			}
			*durations[k] = d
		case k == "token":
			b, err := os.ReadFile(val)
			if conf.token = strings.TrimSpace(string(b)); err != nil || conf.token == "" || len(b) > 4096 {
				return conf, usagef("--rdzv-conf token=%s: want a file holding the token (1 to 4096 bytes): %s", val, describeToken(err))
			}
		case files[k] != nil:
			if _, err := os.Stat(val); err != nil && k != "etcd_binary" {
				return conf, usagef("--rdzv-conf %s=%s: %s", k, val, describe(err))
			}
			*files[k] = val
		default:
			return conf, usagef("--rdzv-conf %q: unknown key %q; known: join_timeout, last_call_timeout, close_timeout, lease_ttl, connect_timeout, cacert, cert, key, etcd_binary, token", v, k)
		}
	}
	if conf.lease < time.Second {
		return conf, usagef("--rdzv-conf lease_ttl=%v: want at least 1s (etcd leases count whole seconds)", conf.lease)
	}
	if (conf.cert == "") != (conf.key == "") {
		return conf, usagef("--rdzv-conf: cert and key go together")
	}
	return conf, nil
}

// parseSeconds accepts a number of seconds or a Go duration.
func parseSeconds(s string) (time.Duration, error) {
	if d, err := time.ParseDuration(s); err == nil {
		return d, nil
	}
	secs, err := strconv.ParseFloat(s, 64)
	if err != nil {
		return 0, err
	}
	return time.Duration(secs * float64(time.Second)), nil
}

// tlsConfig is the TLS configuration --rdzv-conf's files give, or nil.
func (conf rdzvConf) tlsConfig() (*tls.Config, error) {
	if conf.cacert == "" && conf.cert == "" {
		return nil, nil
	}
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if conf.cacert != "" {
		pem, err := os.ReadFile(conf.cacert)
		if err != nil {
			return nil, usagef("--rdzv-conf cacert=%s: %s", conf.cacert, describe(err))
		}
		tc.RootCAs = x509.NewCertPool()
		if !tc.RootCAs.AppendCertsFromPEM(pem) {
			return nil, usagef("--rdzv-conf cacert=%s: no PEM certificate in it", conf.cacert)
		}
	}
	if conf.cert != "" {
		cert, err := tls.LoadX509KeyPair(conf.cert, conf.key)
		if err != nil {
			return nil, usagef("--rdzv-conf cert=%s key=%s: %v", conf.cert, conf.key, err)
		}
		tc.Certificates = []tls.Certificate{cert}
	}
	return tc, nil
}

// openRendezvous is the job's rendezvous: the static Job, or this node's
// membership of the etcd rendezvous (with c10d, after starting the etcd
// server when this node hosts it). Close closes it, and stops the server.
func (p *plan) openRendezvous(ctx context.Context, con console) (rendezvous.Rendezvous, error) {
	m := &p.multi
	if !m.dynamic() {
		rc := p.rdzv // validated by parseConfig
		rc.NProcPerNode = p.nproc
		return rendezvous.Static(rc)
	}
	var hosted *hostedEtcd
	var err error
	if m.backend == "c10d" {
		if hosted, err = p.hostC10d(ctx, con); err != nil {
			return nil, err
		}
	}
	r, err := p.openEtcd(ctx, con.mixed)
	if err != nil {
		hosted.stop()
		return nil, err
	}
	if hosted != nil {
		gone := r.ServerGone
		hosted.gone.Store(&gone)
		return &hostingRendezvous{r, hosted}, nil
	}
	return r, nil
}

// hostWaitLeft bounds the hosting node's wait for the others to leave
// before it stops the etcd server.
const hostWaitLeft = 5 * time.Second

// leaver is a rendezvous whose node can wait, bounded by ctx, until every
// other node has left the run: the node that serves the run waits so
// before it stops serving.
type leaver interface {
	rendezvous.Rendezvous
	WaitLeft(ctx context.Context)
}

var _ leaver = (*etcd.Rendezvous)(nil)

// hostingRendezvous is the rendezvous of the node that hosts the c10d
// etcd server: closing it stops the server too, after the node left.
type hostingRendezvous struct {
	leaver
	hosted *hostedEtcd
}

func (h *hostingRendezvous) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), hostWaitLeft)
	h.WaitLeft(ctx)
	cancel()
	err := h.leaver.Close()
	h.hosted.stop()
	return err
}

// openEtcd joins the etcd rendezvous at the endpoints.
func (p *plan) openEtcd(ctx context.Context, notes io.Writer) (*etcd.Rendezvous, error) {
	m := &p.multi
	ec := p.etcdClient()
	ec.MinNodes, ec.MaxNodes, ec.NProc, ec.LocalAddr = m.minNodes, m.maxNodes, p.nproc, m.localAddr
	ec.JoinTimeout, ec.LastCallTimeout, ec.CloseTimeout = m.conf.join, m.conf.lastCall, m.conf.close
	ec.LeaseTTL, ec.Notes, ec.Position = m.conf.lease, notes, m.position
	r, err := etcd.New(ctx, ec) // bounded by connect_timeout
	if err != nil {
		return nil, p.c10dUnreachable(err)
	}
	return r, nil
}

// etcdClient is how a client of the run reaches etcd: its endpoints,
// run id, connect_timeout, TLS and (c10d) credentials.
func (cfg *config) etcdClient() etcd.Config {
	m := &cfg.multi
	ec := etcd.Config{Endpoints: m.endpoints, RunID: cfg.runID, ConnectTimeout: m.conf.connect, TLS: m.tls}
	cfg.c10dClient(&ec)
	return ec
}

// describeEtcd words an etcd client error for one line.
func describeEtcd(err error) string {
	if errors.Is(err, context.DeadlineExceeded) {
		return "no answer"
	}
	return describe(err)
}

// rendezvousError words an error of the rendezvous: one that kept this
// node out of the job, or that ended the job between rounds.
func rendezvousError(err error) string {
	var je *etcd.JoinTimeoutError
	var ce *etcd.ClosedError
	var ne *etcd.NNodesError
	var se *etcd.ServerError
	var cu *c10dUnreachableError
	var cne *etcd.ConnectError
	var le *etcd.LostError
	switch {
	case errors.As(err, &le):
		return fmt.Sprintf("rendezvous %s: lost etcd at %s: no answer for longer than the lease TTL %v", le.RunID, strings.Join(le.Endpoints, ","), le.TTL)
	case errors.As(err, &se):
		return fmt.Sprintf("--rdzv-endpoint %s is not this run's etcd server: %s; not joining it", strings.Join(se.Endpoints, ","), se.Reason)
	case errors.As(err, &ne):
		return fmt.Sprintf("rendezvous %s: node %s was started with --nnodes %s and this node with --nnodes %s: every node of a job passes the same --nnodes", ne.RunID, ne.Addr, nodesFlag(ne.OtherMin, ne.OtherMax), nodesFlag(ne.MinNodes, ne.MaxNodes))
	case errors.As(err, &cu): // before the *etcd.ConnectError it wraps
		return c10dUnreachableReason(cu)
	case errors.As(err, &cne):
		return fmt.Sprintf("--rdzv-endpoint %s: etcd not reachable within %v (connect_timeout): %s", strings.Join(cne.Endpoints, ","), cne.Timeout, describeEtcd(cne.Err))
	case errors.As(err, &je):
		return fmt.Sprintf("rendezvous %s: %d of %d nodes joined within join_timeout %v (%s)", je.RunID, len(je.Joined), je.MinNodes, je.Timeout, strings.Join(je.Joined, ", "))
	case errors.As(err, &ce):
		return fmt.Sprintf("rendezvous %s: the run has already ended (%s); this node arrived too late: start a new job with another --rdzv-id", ce.RunID, ce.Status)
	}
	return describe(err)
}

// verdictLine is the line that says why a node whose ranks all succeeded
// does not exit 0: it could not confirm the job's success, or another node
// closed the run under it; "" otherwise.
func verdictLine(a *job.Attempt) string {
	ranks := fmt.Sprintf("this node's %d ranks succeeded", len(a.Result.Ranks))
	switch {
	case !a.Result.Succeeded():
		return ""
	case a.Unconfirmed != nil:
		why := ""
		if a.Unconfirmed.Err != nil {
			why = " (" + rendezvousError(a.Unconfirmed.Err) + ")"
		}
		return fmt.Sprintf("%s, but this node could not confirm %s%s: the job's result is unknown here, exit code 1", ranks, a.Unconfirmed.What, why)
	case a.RootCause == nil && a.Change != "":
		return fmt.Sprintf("%s, but %s by another node before every node was done: exit code 1", ranks, a.Change)
	}
	return ""
}

// stopCause words why the launcher stopped the ranks when no rank of this
// node failed first.
func stopCause(err error) string {
	var se *rendezvous.StopError
	if errors.As(err, &se) {
		if f := se.Stop.Failure; f != nil {
			return "stopped the ranks: " + f.String()
		}
		return "stopped the ranks: " + se.Stop.Reason
	}
	return err.Error()
}
