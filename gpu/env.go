package gpu

import (
	"fmt"
	"os"
	"strconv"
	"strings"

	"github.com/mpspawn/mpspawn/place"
)

// Visibility is how each rank is shown its GPUs through
// CUDA_VISIBLE_DEVICES.
type Visibility string

// The visibility policies.
const (
	// VisibilityLocalRank, the default, shows every rank the same list:
	// the job's GPUs in local-rank order, so that entry LOCAL_RANK of the
	// list is the rank's own GPU. torchrun scripts that call
	// torch.cuda.set_device(LOCAL_RANK) (or use f"cuda:{LOCAL_RANK}")
	// select the assigned GPU unchanged, and ranks can still reach each
	// other's GPUs for CUDA IPC and peer access.
	VisibilityLocalRank Visibility = "local-rank"
	// VisibilityIsolate shows each rank only its own GPUs, as srun does:
	// the rank addresses them as cuda:0, cuda:1, ...
	VisibilityIsolate Visibility = "isolate"
)

// ParseVisibility reads a --gpu-visibility value; "" is the default,
// local-rank.
func ParseVisibility(s string) (Visibility, error) {
	switch v := Visibility(s); v {
	case "":
		return VisibilityLocalRank, nil
	case VisibilityLocalRank, VisibilityIsolate:
		return v, nil
	}
	return "", fmt.Errorf("gpu: visibility %q: want local-rank or isolate", s)
}

// Setup turns p, a plan on t, into each rank's environment and binding under
// visibility v. Notes explain where v could not be followed.
//
// Under VisibilityLocalRank every rank gets the job's devices, by UUID, in
// local-rank order. That cannot work when ranks drive several GPUs each
// (entry LOCAL_RANK would not be the rank's first GPU) or use MIG devices
// (CUDA enumerates at most one MIG device per process): there each rank is
// isolated instead, with a note.
//
// A bound rank's OMP_NUM_THREADS is its CPU count divided by the number of
// ranks bound to overlapping CPUs, at least 1.
func (p *Placement) Setup(t *Topology, v Visibility) ([]place.Rank, []string) {
	var notes []string
	if len(p.Ranks) > 0 && len(p.Ranks[0].Devices) > 0 && v == VisibilityLocalRank {
		switch {
		case len(p.Ranks[0].Devices) > 1:
			v = VisibilityIsolate
			notes = append(notes, "each rank drives several GPUs, so each sees only its own (as --gpu-visibility isolate): they are cuda:0.. in the rank")
		case p.Ranks[0].Devices[0].MIG >= 0:
			v = VisibilityIsolate
			notes = append(notes, "the ranks use MIG devices and CUDA shows a process at most one, so each rank sees only its own (as --gpu-visibility isolate): it is cuda:0 in the rank")
		}
	}
	var all VisibleSet
	for _, r := range p.Ranks {
		all = append(all, r.Devices...)
	}
	out := make([]place.Rank, len(p.Ranks))
	for i, r := range p.Ranks {
		env := map[string]string{}
		if len(r.Devices) > 0 {
			env["CUDA_VISIBLE_DEVICES"] = all.Value()
			if v == VisibilityIsolate {
				env["CUDA_VISIBLE_DEVICES"] = r.Devices.Value()
			}
			env["CUDA_DEVICE_ORDER"] = "PCI_BUS_ID"
			env["MPSPAWN_GPUS"] = strings.Join(r.Devices.UUIDs(), ",")
		}
		if r.CPUs.Len() > 0 && !r.CPUs.Equal(t.CPUs) {
			out[i].CPUs = r.CPUs
			env["MPSPAWN_CPUS"] = r.CPUs.String()
			env["OMP_NUM_THREADS"] = strconv.Itoa(max(1, r.CPUs.Len()/p.sharers(i)))
		}
		out[i].Env = env
	}
	return out, notes
}

// sharers is the number of ranks whose CPUs overlap rank i's, itself
// included.
func (p *Placement) sharers(i int) int {
	n := 0
	for _, o := range p.Ranks {
		if o.CPUs.Intersect(p.Ranks[i].CPUs).Len() > 0 {
			n++
		}
	}
	return n
}

// PlanHere plans ranks on this machine as `mpspawn --nproc-per-node auto`
// does: it discovers the GPUs and CPUs, applies CUDA_VISIBLE_DEVICES, and
// places opts.NProc ranks (0: one per usable GPU, or per CPU without GPUs),
// returning each rank's setup under visibility v. It is how Go programs
// give their Go API (package launcher/mp) ranks GPUs and CPU binding:
//
//	ranks, notes, err := gpu.PlanHere(gpu.PlanOptions{NProc: 4}, gpu.VisibilityLocalRank)
//	...
//	s, err := mp.Spawn(ctx, train, len(ranks), cfg, &mp.Options{Ranks: ranks})
//
// Notes say where the plan fell short (no GPU, shared CPUs, visibility
// changed for MIG devices); like Placement.Warnings they are one line each,
// with no package prefix.
func PlanHere(opts PlanOptions, v Visibility) ([]place.Rank, []string, error) {
	allowed, err := AllowedCPUs()
	if err != nil {
		return nil, nil, err
	}
	d, err := Discover(DiscoverOptions{Allowed: allowed})
	if err != nil {
		return nil, nil, err
	}
	notes := d.Warnings
	if d.GPUErr != nil {
		notes = append(notes, fmt.Sprintf("no GPU used: %v", d.GPUErr))
	}
	value, set := os.LookupEnv("CUDA_VISIBLE_DEVICES")
	vis, warnings, err := Visible(d.Topology, value, set)
	notes = append(notes, warnings...)
	if err != nil {
		return nil, notes, err
	}
	p, err := Plan(d.Topology, vis, opts)
	if err != nil {
		return nil, notes, err
	}
	notes = append(notes, p.Warnings...)
	setup, more := p.Setup(d.Topology, v)
	return setup, append(notes, more...), nil
}
