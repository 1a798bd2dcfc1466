// Package rendezvous owns who is in the job: the world size, this node's
// rank, and the master address and port that rank 0 listens on. Membership
// is static for now (flags); etcd and SLURM backends come later.
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
	"strings"
	"sync"
	"unicode"
)

// Defaults that torchrun uses too.
const (
	DefaultMasterAddr = "127.0.0.1"
	DefaultMasterPort = 29500
)

// ErrConfig is wrapped by every error that Static returns for an invalid
// Config; test for it with errors.Is.
var ErrConfig = errors.New("rendezvous: invalid configuration")

// Config is what the user asked for, usually from the command line flags.
type Config struct {
	NNodes       int    // --nnodes, >= 1
	NodeRank     int    // --node-rank, 0 <= NodeRank < NNodes
	NProcPerNode int    // ranks on this node, >= 1
	MasterAddr   string // --master-addr; DefaultMasterAddr when empty
	MasterPort   int    // --master-port; DefaultMasterPort when 0, a reserved free port when 0 and Standalone
	Standalone   bool   // --standalone: one node, master 127.0.0.1, a reserved free port
}

// Membership is who is in the job, as this node sees it: the numbers the
// rank contract is built from (see launcher.Contract). It is a plain value,
// safe to copy.
type Membership struct {
	NNodes       int    // nodes in the job
	NodeRank     int    // this node's rank
	NProcPerNode int    // ranks on this node (LOCAL_WORLD_SIZE)
	WorldSize    int    // NNodes * NProcPerNode
	MasterAddr   string // MASTER_ADDR; empty when the job has no master (Go API ranks)
	MasterPort   int    // MASTER_PORT; 0 when the job has no master
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
	return m.NodeRank*m.NProcPerNode + localRank
}

// Job is the resolved, static membership of this node's part of the job.
//
// A Job made by Static for a standalone Config with no MasterPort holds a
// reservation on MasterPort. Keep the Job until the last rank has exited
// (restarts included), then call Close; a Job must not be copied (copy its
// Membership).
type Job struct {
	Membership

	mu   sync.Mutex
	hold *os.File // the reserved port's socket; nil when none is held
}

// Static validates cfg and resolves it into a Job. Invalid configurations
// give an error that wraps ErrConfig and reads as one line.
//
// With Standalone and no MasterPort, Static reserves a free port: it binds a
// socket to port 0, so the kernel picks a port no socket holds, and keeps
// that socket bound but never listening until Close. Meanwhile the kernel
// gives the port to no other bind of port 0, yet rank 0 can bind and listen
// on it with SO_REUSEADDR, as torch's TCPStore does. On Linux this is race
// free; elsewhere the port is only free when Static returns.
func Static(cfg Config) (*Job, error) {
	if err := validate(cfg); err != nil {
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
		port, hold, err := reservePort()
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

// configError is a validation message that wraps ErrConfig.
type configError string

func (e configError) Error() string { return "rendezvous: " + string(e) }
func (e configError) Unwrap() error { return ErrConfig }

func configErrorf(format string, args ...any) error {
	return configError(fmt.Sprintf(format, args...))
}

func validate(cfg Config) error {
	switch {
	case cfg.NNodes < 1:
		return configErrorf("--nnodes %d must be at least 1", cfg.NNodes)
	case cfg.NodeRank < 0:
		return configErrorf("--node-rank %d must not be negative", cfg.NodeRank)
	case cfg.NodeRank >= cfg.NNodes:
		return configErrorf("--node-rank %d must be less than --nnodes %d", cfg.NodeRank, cfg.NNodes)
	case cfg.NProcPerNode < 1:
		return configErrorf("--nproc-per-node %d must be at least 1", cfg.NProcPerNode)
	case cfg.Standalone && cfg.NNodes != 1:
		return configErrorf("--standalone runs one node, not --nnodes %d", cfg.NNodes)
	case cfg.MasterPort < 0 || cfg.MasterPort > 65535:
		return configErrorf("--master-port %d must be between 1 and 65535", cfg.MasterPort)
	case strings.ContainsFunc(cfg.MasterAddr, badAddrRune):
		return configErrorf("--master-addr %q must be a host name or IP address, without spaces or '/'", cfg.MasterAddr)
	}
	return nil
}

func badAddrRune(r rune) bool { return r == '/' || unicode.IsSpace(r) || unicode.IsControl(r) }
