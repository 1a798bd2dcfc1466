package main

import (
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/launcher"
	"github.com/urfave/cli/v2"
)

// etcdReadyLine is what etcd (3.4 and later, zap logger) logs once it
// serves clients.
const etcdReadyLine = "serving client traffic"

// hostedEtcd is the etcd server a c10d node runs for the job.
type hostedEtcd struct {
	svc     *launcher.Service
	dir     string
	quit    chan struct{} // closed by stop
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
		fmt.Fprintf(w, "mpspawn: warning: the etcd server this node hosts at %s exited during the job (last log line: %.300s); failures still stop this node's ranks, but no longer reach the other nodes\n", ep, last)
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

// hostC10d starts the etcd server of a c10d rendezvous when this node is
// the endpoint's host (its --local-addr, or its host name, is the
// endpoint's host) and nothing serves the endpoint yet; it returns nil
// when this node joins as a client.
func (cfg *config) hostC10d(c *cli.Context) (*hostedEtcd, error) {
	m := &cfg.multi
	ep := m.endpoints[0]
	host, port, _ := net.SplitHostPort(ep)
	self := m.localAddr
	if self == "" {
		self, _ = os.Hostname()
	}
	if host != self {
		return nil, nil
	}
	if conn, err := net.DialTimeout("tcp", ep, 500*time.Millisecond); err == nil {
		conn.Close()
		fmt.Fprintf(c.App.ErrWriter, "mpspawn: rendezvous %s: %s is served already; joining it as a client\n", cfg.runID, ep)
		return nil, nil
	}
	bin := m.conf.etcdBinary
	if bin == "" {
		bin = "etcd"
	}
	path, err := exec.LookPath(bin)
	if err != nil {
		return nil, usagef("--rdzv-backend c10d: this node hosts the rendezvous at %s but has no etcd server (%s: %v): install it (Debian: apt-get install etcd-server), name it with --rdzv-conf etcd_binary=PATH, or use --rdzv-backend etcd with an existing etcd cluster", ep, bin, unwrapExec(err))
	}
	ip, err := listenIP(host)
	if err != nil {
		return nil, usagef("--rdzv-endpoint %s: %v", ep, err)
	}
	peer, err := freePort(ip)
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "mpspawn_etcd_")
	if err != nil {
		return nil, usagef("no directory for the etcd server's data: %s (set TMPDIR)", describe(err))
	}
	client := "http://" + net.JoinHostPort(ip, port)
	peerURL := "http://" + net.JoinHostPort(ip, strconv.Itoa(peer))
	svc, err := launcher.StartService(launcher.ServiceSpec{
		Name: "etcd", Path: path, Ready: etcdReadyLine, ReadyTimeout: m.conf.connect,
		Args: []string{
			"--name", "mpspawn", "--data-dir", filepath.Join(dir, "data"),
			"--listen-client-urls", client, "--advertise-client-urls", client,
			"--listen-peer-urls", peerURL, "--initial-advertise-peer-urls", peerURL,
			"--initial-cluster", "mpspawn=" + peerURL,
			// One member: it elects itself at once, and a short election
			// timeout costs nothing.
			"--heartbeat-interval=10", "--election-timeout=100",
			"--logger", "zap", "--log-outputs", "stderr",
		},
	})
	if err != nil {
		_ = os.RemoveAll(dir)
		return nil, usagef("--rdzv-backend c10d: could not start the etcd server at %s: %s", ep, describe(err))
	}
	fmt.Fprintf(c.App.ErrWriter, "mpspawn: rendezvous %s: hosting an etcd server at %s (pid %d) for the job\n", cfg.runID, ep, svc.Pid())
	h := &hostedEtcd{svc: svc, dir: dir, quit: make(chan struct{}), watched: make(chan struct{})}
	go h.watch(c.App.ErrWriter, ep)
	return h, nil
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
	return ips[0], nil
}

// freePort is a TCP port free on ip when it returns (for the etcd
// server's peer URL, which no other node uses).
func freePort(ip string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(ip, "0"))
	if err != nil {
		return 0, usagef("no free port on %s for the etcd server: %s", ip, describe(err))
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}
