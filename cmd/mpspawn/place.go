package main

import (
	"errors"
	"fmt"
	"strconv"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/place"
)

// nprocSpec is a parsed --nproc-per-node: gpu, auto, cpu or a number.
type nprocSpec struct {
	mode string // "gpu", "auto", "cpu" or "n"
	n    int
}

func parseNproc(s string) (nprocSpec, error) {
	switch s {
	case "gpu", "auto", "cpu":
		return nprocSpec{mode: s}, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil {
		return nprocSpec{}, usagef("--nproc-per-node %q: want a positive number, gpu, cpu or auto", s)
	}
	if n < 1 {
		return nprocSpec{}, usagef("--nproc-per-node %d: want at least 1 rank", n)
	}
	return nprocSpec{mode: "n", n: n}, nil
}

// placement is where the ranks of this node go.
type placement struct {
	topo   *gpu.Topology
	source string // where the topology came from, for messages
	plan   *gpu.Placement
	setup  []place.Rank
}

// placeRanks reads the topology (--topology FILE, or this machine's), applies
// CUDA_VISIBLE_DEVICES to it and plans the ranks. Warnings and notes go
// to con, one line each; every refusal is a usage error: the machine cannot run what
// the command line asks (nprocArg is --nproc-per-node as given).
func placeRanks(spec nprocSpec, nprocArg string, opt placeConfig, con console) (*placement, error) {
	pl := &placement{}
	var gpuErr error
	var err error
	if path := opt.topology; path != "" {
		if pl.topo, err = gpu.LoadTopology(path); err != nil {
			return nil, topologyUsage(path, err)
		}
		pl.source = "snapshot " + path
	} else {
		d, err := discover(spec)
		if err != nil {
			return nil, err
		}
		for _, w := range d.Warnings {
			fmt.Fprintf(con.stderr, "mpspawn: warning: %s\n", w)
		}
		pl.topo, gpuErr = d.Topology, d.GPUErr
		pl.source = "this machine"
	}
	visible := gpu.VisibleSet{}
	if spec.mode != "cpu" {
		value, set := visibleDevicesEnv()
		v, warnings, err := gpu.Visible(pl.topo, value, set)
		for _, w := range warnings {
			fmt.Fprintf(con.stderr, "mpspawn: warning: %s\n", w)
		}
		if err != nil {
			return nil, visibleUsage(value, err)
		}
		visible = v
	}
	gpr := opt.gpusPerRank
	opts := gpu.PlanOptions{NProc: spec.n, GPUsPerRank: gpr, CPUBind: opt.bind}
	switch spec.mode {
	case "gpu":
		if len(visible) == 0 {
			return nil, usagef("--nproc-per-node gpu: no usable GPU on %s: %s", pl.source, noGPUReason(pl.topo, gpuErr))
		}
		opts.NProc = len(visible) / gpr
	case "auto", "n":
		if len(visible) == 0 && gpuErr != nil && !errors.Is(gpuErr, gpu.ErrNoNVML) && spec.mode == "n" {
			return nil, usagef("--nproc-per-node %d: cannot tell which GPUs to use: %s; use --nproc-per-node auto to run on CPUs anyway", spec.n, gpuReason(gpuErr))
		}
		if len(visible) == 0 && (spec.mode == "auto" || opt.sayCPUs) {
			fmt.Fprintf(con.notes, "mpspawn: note: no usable GPU on %s (%s); running on CPUs\n", pl.source, noGPUReason(pl.topo, gpuErr))
		}
		if len(visible) > 0 && spec.mode == "auto" {
			opts.NProc = len(visible) / gpr
		}
	case "cpu":
		opts.NProc = pl.topo.CPUs.Len()
	}
	if pl.plan, err = gpu.Plan(pl.topo, visible, opts); err != nil {
		var few *gpu.TooFewGPUsError
		if errors.As(err, &few) {
			return nil, tooFewUsage(nprocArg, pl.source, few)
		}
		return nil, usageError{err}
	}
	for _, w := range pl.plan.Warnings {
		fmt.Fprintf(con.stderr, "mpspawn: warning: %s\n", w)
	}
	var setupNotes []string
	pl.setup, setupNotes = pl.plan.Setup(pl.topo, opt.visibility)
	for _, n := range setupNotes {
		fmt.Fprintf(con.notes, "mpspawn: note: %s\n", n)
	}
	return pl, nil
}

// discover reads this machine. GPUs are not looked for under
// --nproc-per-node cpu.
func discover(spec nprocSpec) (*gpu.Discovery, error) {
	allowed, err := gpu.AllowedCPUs()
	if err != nil {
		return nil, err
	}
	return gpu.Discover(gpu.DiscoverOptions{Allowed: allowed, SkipGPUs: spec.mode == "cpu"})
}
