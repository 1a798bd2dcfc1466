// Package rendezvous owns who is in the job: the world size, this node's
// rank, and the master address and port that rank 0 listens on. Membership
// comes from flags (Static) or from an etcd v3 rendezvous shared by the
// nodes (package rendezvous/etcd, apart so that single-node programs do
// not link the etcd client), both behind one interface, Rendezvous. Under SLURM,
// DetectSlurm reads the job step's values (with ExpandHostlist for Slurm's
// node lists), which the command turns into the flags' defaults.
//
// It also owns free-port choice. A standalone job reserves its master port
// for as long as the Job lives, so that many standalone jobs started at once
// on one host never pick the same port, while the job's own rank 0 can still
// bind and listen on it (see Static).
package rendezvous

import (
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"unicode"
)

// Defaults that torchrun uses too.
const (
	DefaultMasterAddr = "127.0.0.1"
	DefaultMasterPort = 29500
)

// ErrConfig is what every *ConfigError unwraps to; test for it with
// errors.Is.
var ErrConfig = errors.New("rendezvous: invalid configuration")

// Config is what the user asked for, usually from the command line flags.
type Config struct {
	NNodes       int    // nodes in the job, >= 1
	NodeRank     int    // this node's rank, 0 <= NodeRank < NNodes
	NProcPerNode int    // ranks on this node, >= 1
	MasterAddr   string // host name or IP address of rank 0; DefaultMasterAddr when empty
	MasterPort   int    // 0..65535: DefaultMasterPort when 0, a reserved free port when 0 and Standalone
	Standalone   bool   // one node, master 127.0.0.1, a reserved free port
}

// ConfigError is a Config field that Validate rejects. Its message names
// Config fields, not command-line flags: a command maps Field (and Other)
// to its own flag names. It unwraps to ErrConfig.
type ConfigError struct {
	Field  string // the Config field at fault, by its Go name: "NodeRank"
	Value  any    // the field's value
	Reason string // what is wrong with it, naming no other field: "must be less than"
	// Other is the field that Value is checked against, when there is
	// one ("NNodes" for a NodeRank that is too big), and OtherValue its
	// value; Other is empty otherwise.
	Other      string
	OtherValue any
}

func (e *ConfigError) Error() string {
	msg := fmt.Sprintf("rendezvous: config: %s %s %s", e.Field, showValue(e.Value), e.Reason)
	if e.Other != "" {
		msg += fmt.Sprintf(" %s %s", e.Other, showValue(e.OtherValue))
	}
	return msg
}

// Unwrap makes errors.Is(err, ErrConfig) true.
func (e *ConfigError) Unwrap() error { return ErrConfig }

// showValue writes a field's value as a message shows it: strings quoted.
func showValue(v any) string {
	if s, ok := v.(string); ok {
		return strconv.Quote(s)
	}
	return fmt.Sprint(v)
}

// Validate checks c without acting on it (no port is reserved): the error is
// a *ConfigError for the first problem found. Static validates too (it is
// cheap); a caller that wants to reject bad input before it starts anything
// calls Validate first.
func (c Config) Validate() error {
	bad := func(field string, value any, reason string) error {
		return &ConfigError{Field: field, Value: value, Reason: reason}
	}
	switch {
	case c.NNodes < 1:
		return bad("NNodes", c.NNodes, "must be at least 1")
	case c.NodeRank < 0:
		return bad("NodeRank", c.NodeRank, "must not be negative")
	case c.NodeRank >= c.NNodes:
		return &ConfigError{Field: "NodeRank", Value: c.NodeRank, Reason: "must be less than", Other: "NNodes", OtherValue: c.NNodes}
	case c.NProcPerNode < 1:
		return bad("NProcPerNode", c.NProcPerNode, "must be at least 1")
	case c.Standalone && c.NNodes != 1:
		return bad("NNodes", c.NNodes, "must be 1 for a standalone job")
	case c.MasterPort < 0 || c.MasterPort > 65535:
		return bad("MasterPort", c.MasterPort, "must be between 1 and 65535 (or 0 for the default)")
	case strings.ContainsFunc(c.MasterAddr, badAddrRune):
		return bad("MasterAddr", c.MasterAddr, "must be a host name or IP address, without spaces or '/'")
	}
	return nil
}

func badAddrRune(r rune) bool { return r == '/' || unicode.IsSpace(r) || unicode.IsControl(r) }

// Membership is who is in the job, as this node sees it: the numbers the
// rank contract is built from (see launcher.Contract). It is a plain value,
// safe to copy.
type Membership struct {
	NNodes       int // nodes in the job
	NodeRank     int // this node's rank
	NProcPerNode int // ranks on this node (LOCAL_WORLD_SIZE)
	WorldSize    int // ranks on every node: NNodes * NProcPerNode when nodes are the same size
	// FirstRank is the global rank of this node's local rank 0: the sum of
	// the ranks of the nodes before it, as torchrun's role_info computes
	// it when nodes run different numbers of ranks. Zero means
	// NodeRank * NProcPerNode (every node the same size).
	FirstRank  int
	MasterAddr string // MASTER_ADDR; empty when the job has no master (Go API ranks)
	MasterPort int    // MASTER_PORT; 0 when the job has no master
}

// Local is the membership of a job that runs n ranks on this one node and
// needs no master address (the Go API's ranks and Pool workers).
func Local(n int) Membership {
	return Membership{NNodes: 1, NProcPerNode: n, WorldSize: n}
}

// Rank returns the global rank of this node's local rank localRank. It
// panics if localRank is not in [0, NProcPerNode).
func (m Membership) Rank(localRank int) int {
	if localRank < 0 || localRank >= m.NProcPerNode {
		panic(fmt.Sprintf("rendezvous: local rank %d out of range [0, %d)", localRank, m.NProcPerNode))
	}
	if m.FirstRank == 0 {
		return m.NodeRank*m.NProcPerNode + localRank
	}
	return m.FirstRank + localRank
}

// Job is the resolved, static membership of this node's part of the job.
//
// A Job made by Static for a standalone Config with no MasterPort holds a
// reservation on MasterPort. Keep the Job until the last rank has exited
// (restarts included), then call Close; a Job must not be copied (copy its
// Membership).
type Job struct {
	Membership

	mu     sync.Mutex
	hold   *os.File // the reserved port's socket; nil when none is held
	rounds int      // rounds given by Next
}

// Static validates cfg (see Config.Validate) and resolves it into a Job.
// An invalid cfg gives Validate's *ConfigError.
//
// With Standalone and no MasterPort, Static reserves a free port: it binds a
// socket to port 0, so the kernel picks a port no socket holds, and keeps
// that socket bound but never listening until Close. Meanwhile the kernel
// gives the port to no other bind of port 0, yet rank 0 can bind and listen
// on it with SO_REUSEADDR, as torch's TCPStore does. On Linux this is race
// free; elsewhere the port is only free when Static returns.
func Static(cfg Config) (*Job, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	j := &Job{Membership: Membership{
		NNodes:       cfg.NNodes,
		NodeRank:     cfg.NodeRank,
		NProcPerNode: cfg.NProcPerNode,
		WorldSize:    cfg.NNodes * cfg.NProcPerNode,
		MasterAddr:   cfg.MasterAddr,
		MasterPort:   cfg.MasterPort,
	}}
	if cfg.Standalone {
		j.MasterAddr = DefaultMasterAddr
	}
	if j.MasterAddr == "" {
		j.MasterAddr = DefaultMasterAddr
	}
	switch {
	case j.MasterPort != 0:
	case cfg.Standalone:
		port, hold, err := ReservePort()
		if err != nil {
			return nil, fmt.Errorf("rendezvous: reserve a free port: %w", err)
		}
		j.MasterPort, j.hold = port, hold
	default:
		j.MasterPort = DefaultMasterPort
	}
	return j, nil
}

// Close releases the port reservation, if the Job holds one. It is safe to
// call more than once and from several goroutines; later calls return nil.
func (j *Job) Close() error {
	j.mu.Lock()
	defer j.mu.Unlock()
	if j.hold == nil {
		return nil
	}
	err := j.hold.Close()
	j.hold = nil
	if err != nil {
		return fmt.Errorf("rendezvous: release port %d: %w", j.MasterPort, err)
	}
	return nil
}

// ErrPortInUse is what CheckPort returns (wrapped) when a socket on this
// host already listens on the port.
var ErrPortInUse = errors.New("rendezvous: port in use")
