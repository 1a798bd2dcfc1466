package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/mpspawn/mpspawn/rendezvous/etcd"
)

// etcdReadyLine is what etcd (3.4 and later, zap logger) logs once it
// serves clients.
const etcdReadyLine = "serving client traffic"

// hostedEtcd is the etcd server a c10d node runs for the job.
type hostedEtcd struct {
	svc  *launcher.Service
	dir  string
	quit chan struct{} // closed by stop
	// gone, once set, is called when the server exits during the job:
	// the rendezvous then acts on etcd's loss at once.
	gone    atomic.Pointer[func()]
	watched chan struct{} // closed when the watcher has returned
}

// watch says, once, if the server exits before the job ends: the nodes
// then carry on with the failure detection they still have (see
// docs/multinode.md).
func (h *hostedEtcd) watch(w io.Writer, ep string) {
	defer close(h.watched)
	select {
	case <-h.svc.Done():
		last := h.svc.Log()
		if i := strings.LastIndexByte(last, '\n'); i >= 0 {
			last = last[i+1:]
		}
		fmt.Fprintf(w, "mpspawn: warning: the etcd server this node hosts at %s exited during the job (last log line: %.300s); the job cannot go on without it\n", ep, last)
		if gone := h.gone.Load(); gone != nil {
			(*gone)()
		}
	case <-h.quit:
	}
}

// stop stops the server and removes its data.
func (h *hostedEtcd) stop() {
	if h == nil {
		return
	}
	close(h.quit)
	<-h.watched
	h.svc.Stop(5 * time.Second)
	_ = os.RemoveAll(h.dir)
}

// envRdzvToken holds the c10d token itself, for schedulers that pass
// secrets in the environment (--rdzv-conf token=FILE wins); parseMultinode
// reads it into the config.
const envRdzvToken = "MPSPAWN_RDZV_TOKEN"

// hostC10d starts the etcd server of a c10d rendezvous when this node may
// host it (the endpoint names this machine: see mayHost) and nothing
// serves the endpoint yet; it returns nil when this node joins as a
// client. Of several launchers racing to host, the one whose server binds
// the port hosts; the others join it.
func (cfg *config) hostC10d(ctx context.Context, con console) (*hostedEtcd, error) {
	m := &cfg.multi
	ep := m.endpoints[0]
	host, port, _ := net.SplitHostPort(ep)
	if !mayHost(host, m.localAddr) {
		return nil, nil
	}
	if served(ep) {
		fmt.Fprintf(con.notes, "mpspawn: rendezvous %s: %s is served already; joining it as a client once it shows it is this run's server\n", cfg.runID, ep)
		return nil, nil
	}
	ip, err := listenIP(host)
	if err != nil {
		return nil, &setupError{Step: "--rdzv-endpoint " + ep, Err: err}
	}
	h, err := cfg.startEtcd(ep, ip, port)
	if err != nil && served(ep) {
		fmt.Fprintf(con.notes, "mpspawn: rendezvous %s: another launcher hosts %s; joining it as a client\n", cfg.runID, ep)
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	go h.watch(con.stderr, ep)
	ctx, cancel := context.WithTimeout(ctx, m.conf.connect)
	defer cancel()
	if err := etcd.PrepareServer(ctx, net.JoinHostPort(ip, port), m.tls, "", cfg.runID, m.conf.token); err != nil {
		h.stop()
		return nil, &setupError{Step: "--rdzv-backend c10d: could not set up the etcd server at " + ep, Err: err}
	}
	fmt.Fprintf(con.notes, "mpspawn: rendezvous %s: hosting an etcd server at %s (pid %d) for the job\n", cfg.runID, ep, h.svc.Pid())
	return h, nil
}

// startEtcd starts the etcd server of endpoint ep on ip:port, over TLS
// when the config's TLS has a certificate (and requiring client
// certificates when it has a CA).
func (cfg *config) startEtcd(ep, ip, port string) (*hostedEtcd, error) {
	m := &cfg.multi
	bin := m.conf.etcdBinary
	if bin == "" {
		bin = "etcd"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, &setupError{Step: "--rdzv-backend c10d: this node hosts the rendezvous at " + ep + " but has no etcd server", Err: err, Paren: true,
			Hint: ": install it (Debian: apt-get install etcd-server), name it with --rdzv-conf etcd_binary=PATH, or use --rdzv-backend etcd with an existing etcd cluster"}
	}
	peer, err := freePort(ip)
	if err != nil {
		return nil, err
	}
	// Removed by the guard if mpspawn is SIGKILLed, even while it is made.
	dir, err := launcher.MkdirTemp("", "mpspawn_etcd_")
	if err != nil {
		return nil, &setupError{Step: "no directory for the etcd server's data", Err: err, Hint: " (set TMPDIR)"}
	}
	scheme := "http://"
	var tlsArgs []string
	if m.tls != nil && m.conf.cert != "" {
		scheme, tlsArgs = "https://", []string{"--cert-file", m.conf.cert, "--key-file", m.conf.key}
		if m.conf.cacert != "" {
			tlsArgs = append(tlsArgs, "--trusted-ca-file", m.conf.cacert, "--client-cert-auth")
		}
	}
	client := scheme + net.JoinHostPort(ip, port)
	peerURL := "http://" + net.JoinHostPort(ip, strconv.Itoa(peer))
	svc, err := launcher.StartService(launcher.ServiceSpec{
		Name: "etcd", Path: path, Ready: etcdReadyLine, ReadyTimeout: m.conf.connect,
		Args: append([]string{
			"--name", "mpspawn", "--data-dir", filepath.Join(dir, "data"),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "mpspawn=" + peerURL,
			// One member: it elects itself at once, and a short election
			// timeout costs nothing.
			"--heartbeat-interval=10", "--election-timeout=100",
			// The passwords are HMACs of the token: bcrypt's cost adds
			// nothing to them.
			"--bcrypt-cost", "4",
			"--logger", "zap", "--log-outputs", "stderr",
		}, tlsArgs...),
	})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, &setupError{Step: "--rdzv-backend c10d: could not start the etcd server at " + ep, Err: err}
	}
	return &hostedEtcd{svc: svc, dir: dir, quit: make(chan struct{}), watched: make(chan struct{})}, nil
}

// served reports whether something accepts connections at ep.
func served(ep string) bool {
	conn, err := net.DialTimeout("tcp", ep, 500*time.Millisecond)
	if err == nil {
		conn.Close()
	}
	return err == nil
}

// mayHost reports whether the c10d endpoint's host names this node, as
// torchrun decides it: its --local-addr, localhost, a loopback address,
// its host name or FQDN, or an address of one of its interfaces. A node
// whose --local-addr is itself a loopback address stands for a machine of
// its own (several nodes tried on one machine): it hosts only an endpoint
// that names that address.
func mayHost(host, localAddr string) bool {
	if host == localAddr {
		return true
	}
	if ip := net.ParseIP(localAddr); ip != nil && ip.IsLoopback() {
		return false
	}
	if name, _ := os.Hostname(); strings.EqualFold(host, "localhost") || strings.EqualFold(host, name) {
		return true
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	addrs, err := net.DefaultResolver.LookupIPAddr(ctx, host)
	if err != nil {
		return false
	}
	local, _ := net.InterfaceAddrs()
	for _, a := range addrs {
		if a.IP.IsLoopback() {
			return true
		}
		for _, l := range local {
			if n, ok := l.(*net.IPNet); ok && n.IP.Equal(a.IP) {
				return true
			}
		}
	}
	return false
}

// c10dClient fills in what a c10d node checks and logs in with: the
// host's record of the run, and the job user when there is a token.
func (cfg *config) c10dClient(ec *etcd.Config) {
	m := &cfg.multi
	if m.backend != "c10d" {
		return
	}
	ec.LossStopsRound = true // the server dies with its node
	token := m.conf.token
	rec := etcd.HostRecord("", cfg.runID, token)
	ec.Server = &rec
	if token != "" {
		ec.Username, ec.Password = etcd.JobUser, etcd.Password(token, cfg.runID, etcd.JobUser)
	}
}

// c10dUnreachableError is a c10d endpoint that nothing answers at. Self
// is this node's address: its --local-addr, or its host name.
type c10dUnreachableError struct {
	Endpoint, Self string
	Err            *etcd.ConnectError
}

func (e *c10dUnreachableError) Error() string { return "mpspawn: " + e.Err.Error() }
func (e *c10dUnreachableError) Unwrap() error { return e.Err }

// c10dUnreachable is err as a c10dUnreachableError when it is a c10d
// node's *etcd.ConnectError, and err otherwise.
func (cfg *config) c10dUnreachable(err error) error {
	var ce *etcd.ConnectError
	if cfg.multi.backend != "c10d" || !errors.As(err, &ce) {
		return err
	}
	self := cfg.multi.localAddr
	if self == "" {
		self, _ = os.Hostname()
	}
	return &c10dUnreachableError{Endpoint: cfg.multi.endpoints[0], Self: self, Err: ce}
}

// c10dUnreachableReason words a c10d endpoint that nothing answers at:
// what to check on the node that should host it.
func c10dUnreachableReason(e *c10dUnreachableError) string {
	host, _, _ := net.SplitHostPort(e.Endpoint)
	return fmt.Sprintf("--rdzv-endpoint %s: no etcd server answers within %v (connect_timeout): %s; with --rdzv-backend c10d the node whose address is %s hosts it (its --local-addr, host name or an interface address is %s; this node's is %s): check that it runs and that %s is reachable from here", e.Endpoint, e.Err.Timeout, describeEtcd(e.Err.Err), host, host, e.Self, e.Endpoint)
}

// listenIP is an IP address etcd can listen on for host (etcd wants an IP
// in its listen URLs).
func listenIP(host string) (string, error) {
	if net.ParseIP(host) != nil {
		return host, nil
	}
	ips, err := net.LookupHost(host)
	if err != nil || len(ips) == 0 {
		return "", fmt.Errorf("cannot resolve %s: %v", host, err)
	}
	for _, ip := range ips {
		if net.ParseIP(ip).To4() != nil {
			return ip, nil // as torchrun's clients reach "localhost": 127.0.0.1 first
		}
	}
	return ips[0], nil
}

// freePort is a TCP port free on ip when it returns (for the etcd
// server's peer URL, which no other node uses).
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, &setupError{Step: "no free port on " + ip + " for the etcd server", Err: err}
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// nodesFlag writes a number of nodes as --nnodes takes it.
func nodesFlag(minN, maxN int) string {
	if minN == maxN {
		return strconv.Itoa(maxN)
	}
	return fmt.Sprintf("%d:%d", minN, maxN)
}

// describeToken words why a token file could not be read.
func describeToken(err error) string {
	if err == nil {
		return "it is empty or too long"
	}
	return describe(err)
}
