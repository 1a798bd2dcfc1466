package main

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/urfave/cli/v2"
)

// Flags of `mpspawn --hostfile FILE` / `--hosts a:8,b:8`: one command that
// starts the job on every host over ssh (see ssh.go and docs/multinode.md).
const (
	fHostfile  = "hostfile"
	fHosts     = "hosts"
	fInclude   = "include"
	fExclude   = "exclude"
	fSSH       = "ssh"
	fSSHTime   = "ssh-timeout"
	fEnv       = "env"
	fShip      = "ship"
	fRemoteBin = "remote-mpspawn"
	fSSHNode   = "ssh-node" // hidden: this mpspawn was started over ssh by a driver
	// fNodePosition (hidden) is the node's line of the host list, from
	// 1: the etcd rendezvous gives node ranks in its order.
	fNodePosition = "node-position"
	catHosts      = "Many hosts over ssh"
)

func hostsFlags() []cli.Flag {
	return []cli.Flag{
		&cli.StringFlag{Category: catHosts, Name: fHostfile, Usage: "start the job on every host of `FILE` over ssh (DeepSpeed's \"host slots=N\" or MPI's \"host:N\" lines); node ranks follow the file's order"},
		&cli.StringFlag{Category: catHosts, Name: fHosts, Aliases: []string{"H"}, Usage: "start the job on these `HOSTS` over ssh: a:8,b:8 (a host without :N has one slot)"},
		&cli.StringFlag{Category: catHosts, Name: fInclude, Usage: "use only these `HOSTS` of the host list, and of a host only the GPUs named: node1:0,1@node2"},
		&cli.StringFlag{Category: catHosts, Name: fExclude, Usage: "leave out these `HOSTS` of the host list, or GPUs of them: node1:0,1@node2"},
		&cli.StringFlag{Category: catHosts, Name: fSSH, Value: "ssh", Usage: "the ssh `COMMAND` that reaches a host, e.g. \"ssh -F file -p 2222\" (BatchMode and ConnectTimeout are always added)"},
		&cli.StringFlag{Category: catHosts, Name: fSSHTime, Value: "10s", Usage: "give up on a host that ssh cannot reach or log in to within `DURATION`"},
		&cli.StringSliceFlag{Category: catHosts, Name: fEnv, Usage: "also pass environment variable `NAME` to every host (repeatable; see .mpspawn_env)"},
		&cli.BoolFlag{Category: catHosts, Name: fShip, Usage: "copy this mpspawn to a private temporary path on every host for the job (for hosts without mpspawn installed)"},
		&cli.StringFlag{Category: catHosts, Name: fRemoteBin, Usage: "the mpspawn `PATH` on the hosts; default: this mpspawn's own path where it exists there, else mpspawn on their PATH"},
		&cli.BoolFlag{Name: fSSHNode, Hidden: true, Usage: "run as one node of a job started over ssh: read the environment from stdin, and stop the ranks when stdin ends"},
		&cli.IntFlag{Name: fNodePosition, Hidden: true, Usage: "this node's place `N` in the order of node ranks, from 1 (its line of the driver's host list); the etcd rendezvous orders the nodes by it"},
	}
}

// fanout is the validated host list and ssh flags: with it, this mpspawn
// is the job's driver and starts no rank itself.
type fanout struct {
	hosts    []hostSlots
	gpus     bool // --include/--exclude chose GPU indices: each host gets CUDA_VISIBLE_DEVICES
	ssh      []string
	timeout  time.Duration
	env      []string // NAME=VALUE, in the order given
	ship     bool
	bin      string // --remote-mpspawn, or ""
	self     string // this mpspawn's absolute path, tried first on the hosts
	cwd      string
	jobArgs  []string // the launcher flags every node gets, as given
	progArgs []string // the program and its arguments
	nproc    string   // --nproc-per-node when given, else "" (each host's slots)
}

// driverOnly are the flags the driver keeps to itself: each node gets its
// own value of them, or none.
var driverOnly = []string{fHostfile, fHosts, fInclude, fExclude, fSSH, fSSHTime, fEnv, fShip, fRemoteBin, fSSHNode,
	fNproc, fLogDir, fDryRun, fJSON, fSummaryJSON, fJUnitXML, fRdzvBackend, fRdzvEndpoint, fRdzvID, fRunID, fRdzvConf, fLocalAddr, fQuiet}

// notWithHosts are flags a host list chooses itself.
var notWithHosts = []string{fNNodes, fNodeRank, fNodePosition, fMasterAddr, fMasterPort, fStandalone, fTopology}

// parseFanout reads --hostfile/--hosts and the ssh flags; nil without a
// host list.
func parseFanout(c *cli.Context) (*fanout, error) {
	if !c.IsSet(fHostfile) && !c.IsSet(fHosts) {
		for _, f := range []string{fInclude, fExclude, fShip, fRemoteBin, fEnv} {
			if c.IsSet(f) {
				return nil, usagef("--%s goes with --hostfile or --hosts", f)
			}
		}
		return nil, nil
	}
	for _, f := range notWithHosts {
		if c.IsSet(f) {
			return nil, usagef("--%s cannot go with a host list: the hosts' order gives the node ranks, and the rendezvous the master", f)
		}
	}
	f := &fanout{ship: c.Bool(fShip), bin: c.String(fRemoteBin)}
	var err error
	switch {
	case c.IsSet(fHostfile) && c.IsSet(fHosts):
		return nil, usagef("--hostfile and --hosts cannot be combined")
	case c.IsSet(fHostfile):
		f.hosts, err = readHostfile(c.String(fHostfile))
	default:
		f.hosts, err = parseHostList(c.String(fHosts))
	}
	if err != nil {
		return nil, usageError{err}
	}
	if f.hosts, err = filterHosts(f.hosts, c.String(fInclude), c.String(fExclude)); err != nil {
		return nil, usageError{err}
	}
	f.gpus = gpusChosen(c.String(fInclude) + c.String(fExclude))
	if f.ssh = strings.Fields(c.String(fSSH)); len(f.ssh) == 0 {
		return nil, usagef("--ssh \"\": want the ssh command, e.g. ssh")
	}
	if f.timeout, err = parseSeconds(c.String(fSSHTime)); err != nil || f.timeout < time.Second {
		return nil, usagef("--ssh-timeout %q: want a duration of at least 1s", c.String(fSSHTime))
	}
	if c.IsSet(fNproc) {
		f.nproc = c.String(fNproc)
	}
	if f.cwd, err = os.Getwd(); err != nil {
		return nil, usagef("the working directory: %v", err)
	}
	if f.env, err = travellingEnv(os.Environ(), c.StringSlice(fEnv), f.cwd); err != nil {
		return nil, err
	}
	f.self = selfPath()
	args, _ := c.App.Metadata[argsKey].([]string)
	f.jobArgs, f.progArgs = splitJobArgs(args[1:], c.App.Flags)
	return f, nil
}

// gpusChosen reports whether --include/--exclude named GPU indices
// (spec has a host:list) rather than whole hosts only.
func gpusChosen(spec string) bool { return strings.Contains(spec, ":") }

// selfPath is the absolute path this mpspawn was started by (not
// /proc/self/exe's target: a symlink or a wrapper is what a host may have
// at the same path), or "" when it cannot be told.
func selfPath() string {
	p := os.Args[0]
	if !strings.Contains(p, "/") {
		var err error
		if p, err = exec.LookPath(p); err != nil {
			return ""
		}
	}
	abs, err := filepath.Abs(p)
	if err != nil {
		return ""
	}
	return abs
}

// splitJobArgs splits the launcher's arguments into the job flags every
// node gets (the driver's own dropped) and the program with its arguments.
func splitJobArgs(args []string, fs []cli.Flag) (job, prog []string) {
	names := flagNames(fs)
	owned := map[string]bool{}
	for _, f := range fs {
		if slices.Contains(driverOnly, f.Names()[0]) {
			for _, n := range f.Names() {
				owned[n] = true
			}
		}
	}
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			return job, args[i+1:]
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			return job, args[i:]
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		flag := []string{a}
		if names[name] && !hasValue && i+1 < len(args) {
			i++
			flag = append(flag, args[i])
		}
		if !owned[name] {
			job = append(job, flag...)
		}
	}
	return job, nil
}

// String is the host list for notes: "node1 (2 slots), node2 (2 slots)".
func (f *fanout) String() string {
	var parts []string
	for _, h := range f.hosts {
		parts = append(parts, fmt.Sprintf("%s (%d slots)", h.Host, len(h.Slots)))
	}
	return strings.Join(parts, ", ")
}
