package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/urfave/cli/v2"
)

// parseFanoutRendezvous reads the rendezvous of a job over ssh: c10d
// hosted by the driver unless --rdzv-endpoint names one (or
// --rdzv-backend etcd an etcd cluster).
func (cfg *config) parseFanoutRendezvous(c *cli.Context) error {
	m := &cfg.multi
	m.backend = "c10d"
	if c.IsSet(fRdzvBackend) {
		m.backend = c.String(fRdzvBackend)
	}
	if m.backend != "c10d" && m.backend != "etcd" {
		return usagef("--rdzv-backend %s: a host list meets through c10d (the default, hosted here) or etcd", m.backend)
	}
	var err error
	if m.conf, err = parseRdzvConf(c.String(fRdzvConf)); err != nil {
		return err
	}
	if m.conf.cacert != "" || m.conf.cert != "" {
		return usagef("--rdzv-conf cacert/cert/key: not supported with a host list yet")
	}
	if ep := c.String(fRdzvEndpoint); ep != "" {
		host, port, err := net.SplitHostPort(ep)
		if p, perr := strconv.Atoi(port); err != nil || perr != nil || host == "" || p < 1 || p > 65535 || strings.Contains(ep, ",") {
			return usagef("--rdzv-endpoint %q: want one HOST:PORT", ep)
		}
		m.endpoints = []string{ep}
	} else if m.backend == "etcd" {
		return usagef("--rdzv-backend etcd needs --rdzv-endpoint HOST:PORT (the etcd servers)")
	}
	if id := c.String(fRdzvID); id != "" {
		cfg.runID = id
	}
	if m.backend == "c10d" && m.conf.token == "" {
		m.conf.token = randomHex(24)
	}
	m.localAddr = c.String(fLocalAddr)
	n := len(cfg.fanout.hosts)
	m.minNodes, m.maxNodes = n, n
	cfg.rdzv.NNodes, cfg.rdzv.NProcPerNode = n, 1
	return nil
}

// runFanout runs the job on every host of cfg.fanout and returns its
// exit code: it serves the rendezvous (unless one was named), checks every
// host, starts them all, and reports the root cause once.
func runFanout(ctx context.Context, cfg *config, con console) error {
	f := cfg.fanout
	hosts := make([]*sshHost, len(f.hosts))
	for i, h := range f.hosts {
		hosts[i] = &sshHost{hostSlots: h, rank: i}
	}
	hostRdzv := len(cfg.multi.endpoints) == 0
	if hostRdzv {
		if err := cfg.chooseEndpoint(ctx, f); err != nil {
			return err
		}
	}
	nonce := randomHex(16)
	if cfg.dryRun {
		for _, h := range hosts {
			h.bin = f.binCandidates()[0]
			cfg.nodeCommand(h, nonce)
		}
		return f.printDryRun(con.stdout, hosts, cfg)
	}
	if cfg.logDir != "" {
		if err := makeHostsLogDir(cfg.logDir, cfg.logDirArg, cfg.runID); err != nil {
			return err
		}
	}
	defer f.unship(hosts) // after the job: each host removes what --ship copied
	if err := f.prepareAll(ctx, hosts); err != nil {
		return err
	}
	if hostRdzv {
		hosted, err := cfg.hostC10d(ctx, con)
		if err != nil {
			return err
		}
		defer hosted.stop()
	}
	for _, h := range hosts {
		cfg.nodeCommand(h, nonce)
	}
	fmt.Fprintf(con.notes, "mpspawn: starting %s on %d hosts over ssh: %s; rendezvous %s at %s\n", cfg.script, len(hosts), f, cfg.runID, cfg.multi.endpoints[0])
	r := &sshRun{f: f, con: con, hosts: hosts, grace: cfg.grace, nonce: nonce}
	sig := r.run()
	err := r.verdict(cfg.script, sig)
	if cfg.logDir != "" {
		f.gatherLogs(con.stderr, hosts, cfg.logDir, cfg.runID)
		fmt.Fprintf(con.notes, "mpspawn: the hosts' log files are in %s\n", filepath.Join(cfg.logDirArg, cfg.runID, "<host>"))
	}
	return err
}

// chooseEndpoint picks the c10d endpoint the driver hosts: a free port on
// its address on the route to the first host.
func (cfg *config) chooseEndpoint(ctx context.Context, f *fanout) error {
	addr := cfg.multi.localAddr
	if addr == "" {
		target := f.resolveHost(ctx, f.hosts[0].Host)
		var err error
		if addr, err = driverAddr(target); err != nil {
			return &setupError{Step: "the rendezvous: no address of this machine that host " + f.hosts[0].Host + " can reach", Err: err, Hint: " (give --local-addr ADDR)"}
		}
		cfg.multi.localAddr = addr
	}
	port, err := freePort(addr)
	if err != nil {
		return &setupError{Step: "the rendezvous: no free port on " + addr, Err: err}
	}
	cfg.multi.endpoints = []string{net.JoinHostPort(addr, strconv.Itoa(port))}
	return nil
}

// prepareAll checks every host at once (and ships mpspawn with --ship);
// the errors of all that failed, one line each.
func (f *fanout) prepareAll(ctx context.Context, hosts []*sshHost) error {
	var binary []byte
	if f.ship {
		var err error
		if binary, err = os.ReadFile("/proc/self/exe"); err != nil {
			return &setupError{Step: "--ship: cannot read this mpspawn", Err: err}
		}
	}
	errs := make([]error, len(hosts))
	var wg sync.WaitGroup
	for i, h := range hosts {
		wg.Go(func() { errs[i] = f.prepare(ctx, h, binary) })
	}
	wg.Wait()
	return errors.Join(errs...)
}

// nodeCommand sets h's ssh command line and the header its node reads.
func (cfg *config) nodeCommand(h *sshHost, nonce string) {
	f, m := cfg.fanout, &cfg.multi
	nproc := f.nproc
	if nproc == "" {
		nproc = strconv.Itoa(len(h.Slots))
	}
	args := []string{h.bin, "--" + fSSHNode, "--" + fQuiet, "--" + fRdzvBackend, m.backend, "--" + fRdzvEndpoint, m.endpoints[0],
		"--" + fRdzvID, cfg.runID, "--" + fNNodes, strconv.Itoa(len(f.hosts)), "--" + fNodePosition, strconv.Itoa(h.rank + 1),
		"--" + fNproc, nproc, "--" + fRdzvConf, m.conf.forNodes()}
	if !hasFlag(f.jobArgs, fPrefix, fNoPrefix) {
		args = append(args, "--"+fPrefix, "["+h.Host+":${rank}]: ")
	}
	args = append(args, f.jobArgs...)
	if len(f.progArgs) > 0 && strings.HasPrefix(f.progArgs[0], "-") {
		args = append(args, "--")
	}
	args = append(args, f.progArgs...)
	remote := "cd " + shellQuote(f.cwd) + " && exec " + shellJoin(args)
	if cfg.logDir != "" { // the files go to a private directory there, and come here after
		remote = "cd " + shellQuote(f.cwd) + " && " + remoteLogDir(nonce) + "exec " + shellQuote(args[0]) + ` --` + fLogDir + ` "$d" ` + shellJoin(args[1:])
	}
	h.argv = f.sshArgv(h.Host, remote)
	h.header = nodeHeader{Env: append([]string(nil), f.env...), Nonce: nonce}
	if m.conf.token != "" {
		h.header.Env = append(h.header.Env, envRdzvToken+"="+m.conf.token)
	}
	if f.gpus {
		ids := make([]string, len(h.Slots))
		for i, s := range h.Slots {
			ids[i] = strconv.Itoa(s)
		}
		h.header.Env = append(h.header.Env, "CUDA_VISIBLE_DEVICES="+strings.Join(ids, ","))
	}
}

// hasFlag reports whether args hold one of the flags names.
func hasFlag(args []string, names ...string) bool {
	for _, a := range args {
		name, _, _ := strings.Cut(strings.TrimLeft(a, "-"), "=")
		for _, n := range names {
			if strings.HasPrefix(a, "-") && name == n {
				return true
			}
		}
	}
	return false
}

// forNodes is --rdzv-conf as every node gets it: the timeouts (the token
// travels in the node's environment, never on a command line).
func (conf rdzvConf) forNodes() string {
	secs := func(d time.Duration) string { return strconv.FormatFloat(d.Seconds(), 'f', -1, 64) }
	return fmt.Sprintf("join_timeout=%s,last_call_timeout=%s,close_timeout=%s,lease_ttl=%s,connect_timeout=%s",
		secs(conf.join), secs(conf.lastCall), secs(conf.close), secs(conf.lease), secs(conf.connect))
}

// printDryRun prints, per host, the command line ssh runs and the
// environment its node gets (the rendezvous token hidden).
func (f *fanout) printDryRun(w interface{ Write([]byte) (int, error) }, hosts []*sshHost, cfg *config) error {
	fmt.Fprintf(w, "rendezvous %s: %s at %s (served by this machine unless --rdzv-endpoint named one)\n", cfg.runID, cfg.multi.backend, cfg.multi.endpoints[0])
	for _, h := range hosts {
		fmt.Fprintf(w, "node %d: %s\n", h.rank, h.Host)
		fmt.Fprintf(w, "  command: %s\n", shellJoin(h.argv))
		for _, kv := range h.header.Env {
			if strings.HasPrefix(kv, envRdzvToken+"=") {
				kv = envRdzvToken + "=<secret, sent on stdin>"
			}
			fmt.Fprintf(w, "  env: %s\n", kv)
		}
	}
	if f.ship {
		fmt.Fprintf(w, "--ship: %s is copied to a private temporary directory on each host first, run from there and removed after\n", filepath.Base(os.Args[0]))
	}
	return nil
}
