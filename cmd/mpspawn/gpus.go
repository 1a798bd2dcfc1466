package main

import (
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"

	"github.com/mpspawn/mpspawn/gpu"
	"github.com/urfave/cli/v2"
)

func gpusCommand() *cli.Command {
	return &cli.Command{
		Name:      "gpus",
		Usage:     "show this machine's GPUs, their links, CPU affinity, NUMA nodes, memory and MIG devices",
		UsageText: "mpspawn gpus [--json] [--topology FILE]",
		Description: "Prints a matrix like nvidia-smi topo -m. --json prints the topology snapshot that\n" +
			"mpspawn --topology FILE --dry-run plans against on another machine. On a machine\n" +
			"without GPUs it says so and exits 0 (the JSON has \"gpus\": []).",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: fJSON, Usage: "print the topology snapshot as JSON"},
			&cli.StringFlag{Name: fTopology, Usage: "show the snapshot in `FILE` instead of this machine"},
		},
		Action: gpusAction,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err} // one line, not the whole help
		},
	}
}

func gpusAction(c *cli.Context) error {
	if c.NArg() > 0 {
		return usagef("gpus: unexpected argument %q", c.Args().First())
	}
	var t *gpu.Topology
	var gpuErr error
	if path := c.String(fTopology); path != "" {
		var err error
		if t, err = gpu.LoadTopology(path); err != nil {
			return topologyUsage(path, err)
		}
	} else {
		allowed, err := gpu.AllowedCPUs()
		if err != nil {
			return err
		}
		d, err := gpu.Discover(gpu.DiscoverOptions{Allowed: allowed})
		if err != nil {
			return err
		}
		for _, w := range d.Warnings {
			fmt.Fprintf(c.App.ErrWriter, "mpspawn: warning: %s\n", w)
		}
		t, gpuErr = d.Topology, d.GPUErr
	}
	var err error
	if c.Bool(fJSON) {
		err = t.WriteJSON(c.App.Writer)
	} else {
		err = writeTopologyText(c.App.Writer, t, gpuErr)
	}
	if err != nil {
		return err
	}
	if gpuErr != nil && !errors.Is(gpuErr, gpu.ErrNoNVML) {
		return errors.New(gpuReason(gpuErr)) // the driver is there but failing
	}
	return nil
}

// writeTopologyText prints t the way nvidia-smi topo -m does, followed by
// the NUMA nodes and MIG devices.
func writeTopologyText(w io.Writer, t *gpu.Topology, gpuErr error) error {
	if len(t.GPUs) == 0 {
		why := "no GPUs found"
		if gpuErr != nil {
			why = noGPUReason(t, gpuErr)
		}
		fmt.Fprintf(w, "No NVIDIA GPU on %s: %s. Ranks run on CPUs.\n", t.Host, why)
	}
	if len(t.GPUs) > 0 {
		tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', 0)
		head := []string{""}
		for i := range t.GPUs {
			head = append(head, fmt.Sprintf("GPU%d", i))
		}
		head = append(head, "CPU Affinity", "NUMA Affinity", "Memory", "Name")
		fmt.Fprintln(tw, strings.Join(head, "\t"))
		for i, d := range t.GPUs {
			row := []string{fmt.Sprintf("GPU%d", i)}
			for _, l := range t.Links[i] {
				row = append(row, string(l))
			}
			numa := "N/A"
			if d.NUMANode >= 0 {
				numa = fmt.Sprint(d.NUMANode)
			}
			aff := d.CPUAffinity.String()
			if aff == "" {
				aff = "N/A"
			}
			row = append(row, aff, numa, fmt.Sprintf("%.0f GiB", float64(d.MemoryBytes)/(1<<30)), d.Name)
			fmt.Fprintln(tw, strings.Join(row, "\t"))
		}
		if err := tw.Flush(); err != nil {
			return err
		}
		fmt.Fprintln(w)
		fmt.Fprintln(w, "Legend:")
		fmt.Fprintln(w, "  X    = Self")
		fmt.Fprintln(w, "  SYS  = Connection traversing PCIe as well as the SMP interconnect between NUMA nodes (e.g., QPI/UPI)")
		fmt.Fprintln(w, "  NODE = Connection traversing PCIe as well as the interconnect between PCIe Host Bridges within a NUMA node")
		fmt.Fprintln(w, "  PHB  = Connection traversing PCIe as well as a PCIe Host Bridge (typically the CPU)")
		fmt.Fprintln(w, "  PXB  = Connection traversing multiple PCIe bridges (without traversing the PCIe Host Bridge)")
		fmt.Fprintln(w, "  PIX  = Connection traversing at most a single PCIe bridge")
		fmt.Fprintln(w, "  NV#  = Connection traversing a bonded set of # NVLinks")
		fmt.Fprintln(w)
		for i, d := range t.GPUs {
			fmt.Fprintf(w, "GPU%d: %s %s (PCI %s)\n", i, d.Name, d.UUID, d.PCIBusID)
			for j, m := range d.MIGDevices {
				fmt.Fprintf(w, "  MIG%d: %s %s\n", j, m.Profile, m.UUID)
			}
		}
	}
	fmt.Fprintf(w, "CPUs: %s (%d)\n", t.CPUs, t.CPUs.Len())
	for _, n := range t.NUMANodes {
		fmt.Fprintf(w, "NUMA node %d: %s\n", n.ID, n.CPUs)
	}
	return nil
}
