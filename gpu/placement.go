package gpu

import (
	"errors"
	"fmt"
	"slices"

	"github.com/mpspawn/mpspawn/place"
)

// CPUBind is how ranks are bound to CPUs.
type CPUBind string

// The CPU binding policies.
const (
	// CPUBindExclusive gives each rank its own share of the CPUs local to
	// its GPUs: the ranks on one NUMA node split that node's local CPUs
	// evenly and without overlap, when there are at least as many CPUs
	// as ranks. It is the default.
	CPUBindExclusive CPUBind = "exclusive"
	// CPUBindNUMA gives each rank every CPU of its GPUs' NUMA nodes.
	CPUBindNUMA CPUBind = "numa"
	// CPUBindNone leaves ranks unbound.
	CPUBindNone CPUBind = "none"
)

// ParseCPUBind reads a --cpu-bind value; "" is the default, exclusive.
func ParseCPUBind(s string) (CPUBind, error) {
	switch b := CPUBind(s); b {
	case "":
		return CPUBindExclusive, nil
	case CPUBindExclusive, CPUBindNUMA, CPUBindNone:
		return b, nil
	}
	return "", fmt.Errorf("gpu: cpu bind %q: want none, numa or exclusive", s)
}

// PlanOptions says how many ranks to place and how.
type PlanOptions struct {
	// NProc is the number of ranks; 0 means one per usable GPU group of
	// GPUsPerRank, or one per CPU when no GPU is usable.
	NProc int
	// GPUsPerRank is how many devices each rank drives; 0 means 1.
	GPUsPerRank int
	// CPUBind is the CPU binding policy; "" means CPUBindExclusive.
	CPUBind CPUBind
}

// Placement is where each rank of one node runs.
type Placement struct {
	// Ranks holds one entry per local rank, in local rank order.
	Ranks []RankPlacement
	// Warnings explains where the plan fell short of the policy, such
	// as ranks sharing CPUs because there were fewer CPUs than ranks. They
	// are notes for people, one line each, with no package prefix: the
	// caller says whose they are.
	Warnings []string
}

// RankPlacement is one rank's share of the node.
type RankPlacement struct {
	// LocalRank is the rank's index on this node.
	LocalRank int
	// Devices is the rank's GPUs or MIG devices, empty in a CPU-only plan.
	Devices VisibleSet
	// CPUs is the rank's CPU binding; empty means not bound.
	CPUs place.CPUSet
}

// GPUs returns the positions in Topology.GPUs of r's devices.
func (r RankPlacement) GPUs() []int {
	out := make([]int, len(r.Devices))
	for i, d := range r.Devices {
		out[i] = d.GPU
	}
	return out
}

// ErrTooFewGPUs is what a *TooFewGPUsError unwraps to: more devices were
// asked for than are usable.
var ErrTooFewGPUs = errors.New("gpu: not enough usable gpus")

// TooFewGPUsError is the error Plan returns when the ranks need more devices
// than are usable. It unwraps to ErrTooFewGPUs.
type TooFewGPUsError struct {
	Ranks       int // ranks to place, at least 1
	GPUsPerRank int // devices each rank drives
	Want        int // devices needed: Ranks × GPUsPerRank
	Have        int // devices usable (visible)
}

func (e *TooFewGPUsError) Error() string {
	return fmt.Sprintf("gpu: plan: %d ranks × %d gpus per rank need %d gpus; %d usable", e.Ranks, e.GPUsPerRank, e.Want, e.Have)
}

// Unwrap makes errors.Is(err, ErrTooFewGPUs) true.
func (e *TooFewGPUsError) Unwrap() error { return ErrTooFewGPUs }

// Plan places opts.NProc ranks on t using the devices in visible (see
// Visible). With no visible device it makes a CPU-only plan: ranks spread
// evenly over the NUMA nodes, each with its own cores. When the ranks need
// more devices than are visible the error is a *TooFewGPUsError.
//
// When fewer devices are asked for than are visible, Plan chooses the
// best-connected set: every pair of devices is scored the way NVIDIA's
// go-gpuallocator does (Link.Proximity: NVLink count first, then PCIe
// proximity PIX > PXB > PHB > NODE > SYS), the set with the highest total wins,
// and among equal sets the one spanning the fewest NUMA nodes, then the one
// earliest in visible order. The chosen devices are then ordered so that
// neighbouring ranks are well connected, and consecutive devices form the
// GPUsPerRank groups.
func Plan(t *Topology, visible VisibleSet, opts PlanOptions) (*Placement, error) {
	opts, err := opts.normalize()
	if err != nil {
		return nil, err
	}
	if len(visible) == 0 {
		return planCPU(t, opts)
	}
	n := opts.NProc
	if n == 0 {
		n = len(visible) / opts.GPUsPerRank
	}
	if need := n * opts.GPUsPerRank; n == 0 || need > len(visible) {
		return nil, &TooFewGPUsError{Ranks: max(n, 1), GPUsPerRank: opts.GPUsPerRank, Want: max(need, opts.GPUsPerRank), Have: len(visible)}
	}
	devs := orderDevices(t, chooseDevices(t, visible, n*opts.GPUsPerRank))
	p := &Placement{Ranks: make([]RankPlacement, n)}
	for r := range p.Ranks {
		p.Ranks[r] = RankPlacement{LocalRank: r, Devices: slices.Clone(devs[r*opts.GPUsPerRank : (r+1)*opts.GPUsPerRank])}
	}
	bindGPURanks(t, p, opts.CPUBind)
	return p, nil
}

func (o PlanOptions) normalize() (PlanOptions, error) {
	if o.NProc < 0 {
		return o, fmt.Errorf("gpu: plan: %d ranks: want 0 or more", o.NProc)
	}
	if o.GPUsPerRank < 0 {
		return o, fmt.Errorf("gpu: plan: %d gpus per rank: want 1 or more", o.GPUsPerRank)
	}
	if o.GPUsPerRank == 0 {
		o.GPUsPerRank = 1
	}
	b, err := ParseCPUBind(string(o.CPUBind))
	o.CPUBind = b
	return o, err
}

// bindGPURanks sets each rank's CPUs from the CPUs local to its devices.
func bindGPURanks(t *Topology, p *Placement, bind CPUBind) {
	if bind == CPUBindNone {
		return
	}
	local := make([]place.CPUSet, len(p.Ranks))
	for r, rp := range p.Ranks {
		local[r] = place.CPUSet{}
		for _, g := range rp.GPUs() {
			if bind == CPUBindNUMA {
				local[r] = local[r].Union(t.NUMACPUs(g))
			} else {
				local[r] = local[r].Union(t.LocalCPUs(g))
			}
		}
	}
	if bind == CPUBindNUMA {
		for r := range p.Ranks {
			p.Ranks[r].CPUs = local[r]
		}
		return
	}
	shareOut(p, local)
}

// shareOut gives the ranks that have the same local CPUs an even,
// non-overlapping share of them, leaving out CPUs already handed to earlier
// groups. Where a group has fewer CPUs than ranks, its ranks share them all.
func shareOut(p *Placement, local []place.CPUSet) {
	used := place.CPUSet{}
	done := make([]bool, len(local))
	for r := range local {
		if done[r] {
			continue
		}
		var group []int
		for o := r; o < len(local); o++ {
			if !done[o] && local[o].Equal(local[r]) {
				group = append(group, o)
				done[o] = true
			}
		}
		if local[r].Len() == 0 {
			p.warn("ranks %v: no cpus known to be local to their gpus; not bound", group)
			continue
		}
		avail := local[r].Difference(used)
		parts := avail.Split(len(group))
		if parts == nil {
			p.warn("ranks %v share cpus %q: %d free cpus for %d ranks", group, local[r].String(), avail.Len(), len(group))
		}
		for i, o := range group {
			p.Ranks[o].CPUs = local[r]
			if parts != nil {
				p.Ranks[o].CPUs = parts[i]
			}
		}
		used = used.Union(avail)
	}
}

func (p *Placement) warn(format string, args ...any) {
	p.Warnings = append(p.Warnings, fmt.Sprintf(format, args...))
}

// maxRanksPerCPU is how many ranks per usable CPU a plan without GPUs
// takes without a warning.
const maxRanksPerCPU = 4

// planCPU spreads ranks over the NUMA nodes (or all CPUs where none are
// known) in contiguous blocks, as evenly as the node count allows.
func planCPU(t *Topology, opts PlanOptions) (*Placement, error) {
	n := opts.NProc
	if n == 0 {
		n = t.CPUs.Len()
	}
	if n == 0 {
		return nil, errors.New("gpu: plan: no gpus and no cpus known; give the number of ranks")
	}
	var nodes []place.CPUSet
	for _, nn := range t.NUMANodes {
		if nn.CPUs.Len() > 0 {
			nodes = append(nodes, nn.CPUs)
		}
	}
	if len(nodes) == 0 {
		nodes = []place.CPUSet{t.CPUs}
	}
	p := &Placement{Ranks: make([]RankPlacement, n)}
	if c := t.CPUs.Len(); c > 0 && n > maxRanksPerCPU*c {
		p.warn("%d ranks on %d usable cpus (more than %d per cpu): they compete for the cpus, and fewer ranks may finish sooner", n, c, maxRanksPerCPU)
	}
	r := 0
	for i, cpus := range nodes {
		m := n / len(nodes)
		if i < n%len(nodes) {
			m++
		}
		parts := cpus.Split(m)
		// Ranks sharing every CPU of the node are simply not bound: no
		// warning for what a plain oversubscribed launch does anyway.
		if opts.CPUBind == CPUBindExclusive && m > 0 && parts == nil && cpus.Len() > 0 && !cpus.Equal(t.CPUs) {
			p.warn("ranks %d-%d share cpus %q: %d cpus for %d ranks", r, r+m-1, cpus.String(), cpus.Len(), m)
		}
		for k := range m {
			rp := RankPlacement{LocalRank: r, Devices: VisibleSet{}, CPUs: place.CPUSet{}}
			switch {
			case opts.CPUBind == CPUBindNUMA, opts.CPUBind == CPUBindExclusive && parts == nil:
				rp.CPUs = cpus
			case opts.CPUBind == CPUBindExclusive:
				rp.CPUs = parts[k]
			}
			p.Ranks[r] = rp
			r++
		}
	}
	return p, nil
}
