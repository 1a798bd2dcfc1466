package main

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/mpspawn/mpspawn/place"
	"github.com/mpspawn/mpspawn/rendezvous"
)

// planJSON is the --dry-run --json form of a plan.
type planJSON struct {
	Rendezvous schedJSON      `json:"rendezvous"`
	Host       string         `json:"host"`
	Source     string         `json:"source"`
	Ranks      []rankPlanJSON `json:"ranks"`
	Warnings   []string       `json:"warnings"`
}

type rankPlanJSON struct {
	Rank      int               `json:"rank"`
	LocalRank int               `json:"local_rank"`
	GPUs      []string          `json:"gpus"`
	CPUs      place.CPUSet      `json:"cpus"`
	Env       map[string]string `json:"env"`
}

// dryRun prints where each rank would run and what it would be given, and
// starts nothing.
func (p *plan) dryRun(w io.Writer) error {
	addr, port := p.rdzv.MasterAddr, p.rdzv.MasterPort
	if p.rdzv.Standalone {
		addr = "127.0.0.1"
	}
	job := p.job(rendezvous.Membership{
		NNodes: p.rdzv.NNodes, NodeRank: p.rdzv.NodeRank, NProcPerNode: p.nproc,
		WorldSize: p.rdzv.NNodes * p.nproc, MasterAddr: addr, MasterPort: port,
	})
	contract := job.Contract()
	contract.StartMethod = p.startMethod // no method is started for a dry run
	out := planJSON{Rendezvous: p.schedPlan(addr, port), Host: p.place.topo.Host, Source: p.place.source, Warnings: p.place.plan.Warnings}
	if out.Warnings == nil {
		out.Warnings = []string{}
	}
	for lr, rp := range p.place.plan.Ranks {
		env := contract.Vars(lr, job.Placement(lr))
		// What only a real launch knows: the launcher's pid, files, a
		// port --standalone picks.
		for _, k := range []string{"TORCHELASTIC_ERROR_FILE", "MPSPAWN_LAUNCHER_PID", "MPSPAWN_LOG_DIR"} {
			delete(env, k)
		}
		if port == 0 {
			delete(env, "MASTER_PORT")
		}
		out.Ranks = append(out.Ranks, rankPlanJSON{
			Rank: job.Rank(lr), LocalRank: lr,
			GPUs: rp.Devices.UUIDs(), CPUs: p.place.setup[lr].CPUs, Env: env,
		})
		if out.Ranks[lr].CPUs == nil {
			out.Ranks[lr].CPUs = place.CPUSet{}
		}
	}
	if p.json {
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		return enc.Encode(out)
	}
	return writePlanText(w, p.place, out)
}

// writePlanText prints a plan as a table, then each rank's placement
// variables.
func writePlanText(w io.Writer, pl *placement, plan planJSON) error {
	writeSchedText(w, plan.Rendezvous)
	fmt.Fprintf(w, "%d ranks on %s (%s)\n", len(plan.Ranks), plan.Host, plan.Source)
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "RANK\tLOCAL_RANK\tGPUS\tCPUS\tOMP_NUM_THREADS")
	for i, r := range plan.Ranks {
		gpus := "-"
		if devs := pl.plan.Ranks[i].Devices; len(devs) > 0 {
			var names []string
			for _, d := range devs {
				names = append(names, deviceName(d))
			}
			gpus = strings.Join(names, ",")
		}
		cpus := r.CPUs.String()
		if cpus == "" {
			cpus = "not bound"
		}
		omp := r.Env["OMP_NUM_THREADS"]
		if omp == "" {
			omp = "unset"
		}
		fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\n", r.Rank, r.LocalRank, gpus, cpus, omp)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	lines := make([]string, len(plan.Ranks))
	for i, r := range plan.Ranks {
		var kv []string
		for _, k := range slices.Sorted(maps.Keys(r.Env)) {
			if strings.HasPrefix(k, "CUDA_") {
				kv = append(kv, k+"="+r.Env[k])
			}
		}
		lines[i] = strings.Join(kv, " ")
	}
	// local-rank visibility gives every rank the same long list: once.
	if len(lines) > 1 && lines[0] != "" && !slices.ContainsFunc(lines, func(l string) bool { return l != lines[0] }) {
		fmt.Fprintf(w, "every local rank: %s\n", lines[0])
		return nil
	}
	for i, l := range lines {
		if l != "" {
			fmt.Fprintf(w, "local rank %d: %s\n", plan.Ranks[i].LocalRank, l)
		}
	}
	return nil
}

// deviceName is a device as the dry run shows it: "GPU3", or "GPU0/MIG1"
// for the second MIG device of GPU 0.
func deviceName(d gpu.VisibleDevice) string {
	if d.MIG >= 0 {
		return fmt.Sprintf("GPU%d/MIG%d", d.GPU, d.MIG)
	}
	return fmt.Sprintf("GPU%d", d.GPU)
}
