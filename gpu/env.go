package gpu

import (
	"fmt"
	"strconv"
	"strings"
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

// RankSetup is what a placement gives one rank: the variables to set in its
// environment and the CPUs to bind it to.
type RankSetup struct {
	// Env holds CUDA_VISIBLE_DEVICES and CUDA_DEVICE_ORDER for a rank with
	// GPUs, OMP_NUM_THREADS for a bound rank (to be set only where the user
	// left it unset), and MPSPAWN_GPUS and MPSPAWN_CPUS, the rank's own
	// device UUIDs and CPU list.
	Env map[string]string
	// CPUs is the rank's CPU binding; nil when the rank is not bound,
	// including when its share would be every CPU of the node.
	CPUs CPUSet
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
func (p *Placement) Setup(t *Topology, v Visibility) ([]RankSetup, []string) {
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
	out := make([]RankSetup, len(p.Ranks))
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
