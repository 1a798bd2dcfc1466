package gpu

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"

	"github.com/mpspawn/mpspawn/place"
)

// Topology is a snapshot of one node: its CPUs, NUMA nodes, GPUs and the
// links between them. Its JSON form is what `mpspawn gpus --json` prints and
// `--topology FILE` reads:
//
//	{
//	  "host": "node1",
//	  "cpus": "0-63",
//	  "numa_nodes": [{"id": 0, "cpus": "0-15,32-47"}, ...],
//	  "gpus": [{"index": 0, "uuid": "GPU-...", "name": "NVIDIA A100-SXM4-40GB",
//	            "pci_bus_id": "00000000:07:00.0", "numa_node": 0,
//	            "cpu_affinity": "0-15,32-47", "memory_bytes": 42949672960,
//	            "mig_devices": [{"uuid": "MIG-...", "profile": "3g.20gb"}]}, ...],
//	  "links": [["X", "NV12", ...], ...]
//	}
//
// A node without GPUs has "gpus": [] and "links": [].
type Topology struct {
	// Host is the node's host name.
	Host string `json:"host"`
	// CPUs is every online CPU of the node.
	CPUs place.CPUSet `json:"cpus"`
	// NUMANodes lists the node's NUMA nodes; it may be empty where the
	// kernel reports none.
	NUMANodes []NUMANode `json:"numa_nodes"`
	// GPUs lists the GPUs in NVML order (PCI bus id order); GPUs[i].Index
	// is i.
	GPUs []Device `json:"gpus"`
	// Links[i][j] is how GPUs[i] and GPUs[j] are connected; Links[i][i]
	// is X. The matrix is square and symmetric.
	Links [][]Link `json:"links"`
}

// NUMANode is one NUMA node and its CPUs.
type NUMANode struct {
	// ID is the kernel's node number.
	ID int `json:"id"`
	// CPUs is the node's CPUs.
	CPUs place.CPUSet `json:"cpus"`
}

// Device is one physical GPU.
type Device struct {
	// Index is the NVML index, which follows PCI bus order.
	Index int `json:"index"`
	// UUID is the GPU's UUID, "GPU-" followed by hex digits and dashes.
	UUID string `json:"uuid"`
	// Name is the product name, such as "NVIDIA A100-SXM4-40GB".
	Name string `json:"name"`
	// PCIBusID is the PCI address, such as "00000000:07:00.0".
	PCIBusID string `json:"pci_bus_id"`
	// NUMANode is the NUMA node the GPU hangs off, or -1 if unknown.
	NUMANode int `json:"numa_node"`
	// CPUAffinity is the CPUs closest to the GPU; empty if unknown.
	CPUAffinity place.CPUSet `json:"cpu_affinity"`
	// MemoryBytes is the GPU's total memory.
	MemoryBytes uint64 `json:"memory_bytes"`
	// MIGDevices lists the GPU's MIG devices when MIG mode is on.
	MIGDevices []MIGDevice `json:"mig_devices"`
}

// MIGDevice is one MIG (Multi-Instance GPU) partition of a Device.
type MIGDevice struct {
	// UUID is the MIG device's UUID, "MIG-" followed by hex digits and
	// dashes.
	UUID string `json:"uuid"`
	// Profile is the MIG profile, such as "1g.5gb" or "3g.20gb".
	Profile string `json:"profile"`
}

// ErrInvalidTopology is what every *TopologyError unwraps to.
var ErrInvalidTopology = errors.New("gpu: invalid topology")

// TopologyError rejects a topology: a snapshot that is not JSON of the
// documented form, or a topology that is not self-consistent (see
// Validate). It unwraps to ErrInvalidTopology and to Err.
type TopologyError struct {
	Path string // the snapshot's file; empty when not read from a file
	Err  error  // what is wrong: a JSON decoding (or reading) error, or an inconsistency
}

func (e *TopologyError) Error() string {
	if e.Path == "" {
		return "gpu: invalid topology: " + e.Err.Error()
	}
	return "gpu: invalid topology " + e.Path + ": " + e.Err.Error()
}

// Unwrap makes errors.Is(err, ErrInvalidTopology) true, and errors.As
// reach the JSON error.
func (e *TopologyError) Unwrap() []error { return []error{ErrInvalidTopology, e.Err} }

// LoadTopology reads and validates the topology snapshot in the file at path.
// A file that cannot be read gives an error wrapping the *fs.PathError; one
// that holds no valid topology gives a *TopologyError naming path.
func LoadTopology(path string) (*Topology, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("gpu: load topology: %w", err)
	}
	defer f.Close()
	t, err := ReadTopology(f)
	var te *TopologyError
	if errors.As(err, &te) {
		te.Path = path
	}
	return t, err
}

// ReadTopology reads one topology snapshot in JSON form from r and validates
// it. Unknown fields are rejected, so that a typo does not silently drop data.
// The error is a *TopologyError.
func ReadTopology(r io.Reader) (*Topology, error) {
	dec := json.NewDecoder(r)
	dec.DisallowUnknownFields()
	var t Topology
	if err := dec.Decode(&t); err != nil {
		return nil, &TopologyError{Err: err}
	}
	if err := t.Validate(); err != nil {
		return nil, err
	}
	return &t, nil
}

// WriteJSON writes t to w in its documented JSON form, indented, with empty
// lists written as [] rather than null.
func (t *Topology) WriteJSON(w io.Writer) error {
	out := *t
	out.NUMANodes = nonNil(out.NUMANodes)
	out.Links = nonNil(out.Links)
	out.GPUs = slices.Clone(nonNil(out.GPUs))
	for i := range out.GPUs {
		out.GPUs[i].MIGDevices = nonNil(out.GPUs[i].MIGDevices)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	if err := enc.Encode(&out); err != nil {
		return fmt.Errorf("gpu: write topology: %w", err)
	}
	return nil
}

func nonNil[S ~[]E, E any](s S) S {
	if s == nil {
		return S{}
	}
	return s
}

// Validate checks that t is self-consistent: GPU indices match positions,
// UUIDs (of GPUs and MIG devices together) are present and unique, NUMA
// nodes are unique and every GPU's node exists, and the link matrix is
// square, sized to the GPUs, symmetric, X on the diagonal only, and of known
// kinds. The error is a *TopologyError.
func (t *Topology) Validate() error {
	for _, check := range []func() error{t.validateNUMA, t.validateGPUs, t.validateLinks} {
		if err := check(); err != nil {
			return &TopologyError{Err: err}
		}
	}
	return nil
}

func (t *Topology) validateNUMA() error {
	seen := map[int]bool{}
	for _, n := range t.NUMANodes {
		if n.ID < 0 {
			return fmt.Errorf("numa node id %d is negative", n.ID)
		}
		if seen[n.ID] {
			return fmt.Errorf("numa node %d listed twice", n.ID)
		}
		seen[n.ID] = true
	}
	return nil
}

func (t *Topology) validateGPUs() error {
	uuids := map[string]string{}
	claim := func(uuid, prefix, who string) error {
		if len(uuid) <= len(prefix) || uuid[:len(prefix)] != prefix {
			return fmt.Errorf("%s: uuid %q does not start with %q", who, uuid, prefix)
		}
		if other, dup := uuids[uuid]; dup {
			return fmt.Errorf("%s: uuid %q already used by %s", who, uuid, other)
		}
		uuids[uuid] = who
		return nil
	}
	for i, d := range t.GPUs {
		who := fmt.Sprintf("gpu %d", i)
		if d.Index != i {
			return fmt.Errorf("%s: index is %d; gpus must be listed in index order", who, d.Index)
		}
		if err := claim(d.UUID, "GPU-", who); err != nil {
			return err
		}
		if d.NUMANode < -1 || d.NUMANode >= 0 && len(t.NUMANodes) > 0 && t.numaNode(d.NUMANode) == nil {
			return fmt.Errorf("%s: numa node %d is not in numa_nodes", who, d.NUMANode)
		}
		for j, m := range d.MIGDevices {
			if err := claim(m.UUID, "MIG-", fmt.Sprintf("gpu %d mig device %d", i, j)); err != nil {
				return err
			}
		}
	}
	return nil
}

func (t *Topology) validateLinks() error {
	n := len(t.GPUs)
	if len(t.Links) != n {
		return fmt.Errorf("links has %d rows for %d gpus", len(t.Links), n)
	}
	for i, row := range t.Links {
		if len(row) != n {
			return fmt.Errorf("links row %d has %d entries for %d gpus", i, len(row), n)
		}
	}
	for i, row := range t.Links {
		for j, l := range row {
			switch {
			case !l.Valid():
				return fmt.Errorf("links[%d][%d]: unknown link kind %q", i, j, l)
			case (i == j) != (l == LinkSelf):
				return fmt.Errorf("links[%d][%d] is %q; X belongs on the diagonal and only there", i, j, l)
			case t.Links[j][i] != l:
				return fmt.Errorf("links[%d][%d] is %q but links[%d][%d] is %q", i, j, l, j, i, t.Links[j][i])
			}
		}
	}
	return nil
}

// numaNode returns the NUMA node with the given id, or nil.
func (t *Topology) numaNode(id int) *NUMANode {
	for i := range t.NUMANodes {
		if t.NUMANodes[i].ID == id {
			return &t.NUMANodes[i]
		}
	}
	return nil
}

// LocalCPUs returns the CPUs local to GPU i: its CPU affinity when known,
// else its NUMA node's CPUs, else all of the node's CPUs.
func (t *Topology) LocalCPUs(i int) place.CPUSet {
	d := t.GPUs[i]
	if d.CPUAffinity.Len() > 0 {
		return d.CPUAffinity
	}
	return t.NUMACPUs(i)
}

// NUMACPUs returns the CPUs of GPU i's NUMA node, or all of the node's CPUs
// when the GPU's NUMA node is unknown.
func (t *Topology) NUMACPUs(i int) place.CPUSet {
	if n := t.numaNode(t.GPUs[i].NUMANode); n != nil && n.CPUs.Len() > 0 {
		return n.CPUs
	}
	return t.CPUs
}
