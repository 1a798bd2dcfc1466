package gpu

import (
	"errors"
	"fmt"
	"strings"
)

// VisibleDevice is one device CUDA would enumerate: a whole GPU, or one MIG
// device of a GPU in MIG mode.
type VisibleDevice struct {
	// GPU is the position of the physical GPU in Topology.GPUs (its NVML
	// index).
	GPU int
	// MIG is the position of the MIG device in that GPU's MIGDevices, or
	// -1 for the whole GPU.
	MIG int
	// UUID is the GPU's UUID, or the MIG device's.
	UUID string
}

// VisibleSet is the devices a process may use, in CUDA's enumeration order.
type VisibleSet []VisibleDevice

// UUIDs returns the UUIDs of the devices in s, in order.
func (s VisibleSet) UUIDs() []string {
	out := make([]string, len(s))
	for i, d := range s {
		out[i] = d.UUID
	}
	return out
}

// Value formats s as a CUDA_VISIBLE_DEVICES value, by UUID, so that CUDA
// selects the same physical devices whatever its device order. The empty set
// is "-1", which CUDA reads as no device (an empty value would be read the same
// way by CUDA, but is easy to mistake for "unset" in shells and env files).
func (s VisibleSet) Value() string {
	if len(s) == 0 {
		return "-1"
	}
	return strings.Join(s.UUIDs(), ",")
}

// ErrInvalidVisible is what a *VisibleError unwraps to: a set, non-empty
// CUDA_VISIBLE_DEVICES hides every device because its first entry is invalid
// or an entry repeats.
var ErrInvalidVisible = errors.New("gpu: invalid CUDA_VISIBLE_DEVICES")

// VisibleError is the error Visible returns when a CUDA_VISIBLE_DEVICES value
// that names devices leaves none visible. It unwraps to ErrInvalidVisible.
type VisibleError struct {
	Value  string // the variable's value
	Entry  string // the entry that ended the list, as written
	Reason string // why it ended the list, naming the entry: "\"9\" is not an index"
}

func (e *VisibleError) Error() string {
	return fmt.Sprintf("gpu: CUDA_VISIBLE_DEVICES=%q leaves no device visible: %s", e.Value, e.Reason)
}

// Unwrap makes errors.Is(err, ErrInvalidVisible) true.
func (e *VisibleError) Unwrap() error { return ErrInvalidVisible }

// Visible returns the devices of t that a process sees under
// CUDA_VISIBLE_DEVICES, in CUDA's order; value and set are what
// os.LookupEnv("CUDA_VISIBLE_DEVICES") returns.
//
// The value is read the way CUDA reads it (and the way PyTorch's
// torch.cuda._parse_visible_devices models it):
//
//   - unset: every device; empty, or starting with -1: no device;
//   - a comma-separated list whose kind the first entry decides: indices,
//     "GPU-" UUIDs, or "MIG-" UUIDs; an entry of another kind ends the list;
//   - an index is read like strtoul: leading and trailing spaces are skipped
//     and anything after the leading digits is ignored ("1gpu" is 1);
//   - a UUID may be shortened to any prefix that names one device; spaces
//     around it are skipped;
//   - the first invalid entry (no digits, negative, out of range, unknown or
//     ambiguous UUID) ends the list: the entries before it stay visible;
//   - a device named twice makes the whole list empty: CUDA then sees no
//     device at all.
//
// A GPU in MIG mode, selected by index or GPU UUID (or with the variable
// unset), stands for its MIG devices. Indices count GPUs in NVML (PCI bus)
// order, as CUDA does under CUDA_DEVICE_ORDER=PCI_BUS_ID; where the GPUs are
// not all the same model a warning says that CUDA's default order may differ.
//
// Warnings describe entries that were dropped; they are notes for people,
// one line each, with no package prefix. The error, a *VisibleError, is
// returned only when a set, non-empty value that does not start with -1
// leaves no device visible; it says which entry ended the list, and no
// warning repeats it.
func Visible(t *Topology, value string, set bool) (VisibleSet, []string, error) {
	if !set {
		var all VisibleSet
		for i := range t.GPUs {
			all = append(all, t.expand(i)...)
		}
		return nonNil(all), nil, nil
	}
	entries := strings.Split(value, ",")
	if strings.TrimSpace(value) == "" {
		return VisibleSet{}, nil, nil
	}
	p := visibleParser{t: t, kind: entryKind(entries[0])}
	for i, e := range entries {
		devs, stop := p.resolve(e)
		if stop != "" {
			if len(p.out) == 0 && !strings.HasPrefix(strings.TrimSpace(value), "-") {
				return nil, nil, &VisibleError{Value: value, Entry: e, Reason: stop}
			}
			negative := strings.HasPrefix(strings.TrimSpace(e), "-")
			if !negative || i < len(entries)-1 {
				p.warn("CUDA_VISIBLE_DEVICES=%q: %s ends the list; %s", value, stop, dropped(entries[i:]))
			}
			break
		}
		if p.seen(devs) { // CUDA then sees no device at all
			return nil, nil, &VisibleError{Value: value, Entry: e, Reason: fmt.Sprintf("%q names a device already listed", e)}
		}
		p.out = append(p.out, devs...)
	}
	if p.kind == kindIndex && len(p.out) > 0 && t.mixedModels() {
		p.warn("CUDA_VISIBLE_DEVICES=%q counts GPUs in PCI bus order; set CUDA_DEVICE_ORDER=PCI_BUS_ID so that CUDA counts them the same way on this node of mixed GPU models", value)
	}
	return nonNil(p.out), p.warnings, nil
}

func dropped(rest []string) string {
	if len(rest) == 1 {
		return "nothing after it is read"
	}
	return fmt.Sprintf("%q dropped", strings.Join(rest, ","))
}

type entryKindT int

const (
	kindIndex entryKindT = iota
	kindGPU
	kindMIG
)

func entryKind(e string) entryKindT {
	e = strings.TrimSpace(e)
	switch {
	case strings.HasPrefix(e, "GPU-"):
		return kindGPU
	case strings.HasPrefix(e, "MIG-"):
		return kindMIG
	}
	return kindIndex
}

type visibleParser struct {
	t        *Topology
	kind     entryKindT
	out      VisibleSet
	warnings []string
}

func (p *visibleParser) warn(format string, args ...any) {
	p.warnings = append(p.warnings, fmt.Sprintf(format, args...))
}

// resolve returns the devices entry e names, or why e ends the list.
func (p *visibleParser) resolve(e string) (VisibleSet, string) {
	e = strings.TrimSpace(e)
	if entryKind(e) != p.kind {
		return nil, fmt.Sprintf("%q is not of the same kind as the first entry", e)
	}
	switch p.kind {
	case kindGPU:
		return p.resolveUUID(e, false)
	case kindMIG:
		return p.resolveUUID(e, true)
	}
	n, ok := strtoul(e)
	switch {
	case !ok:
		return nil, fmt.Sprintf("%q is not an index", e)
	case n >= len(p.t.GPUs):
		return nil, fmt.Sprintf("index %d is out of range (%d gpus)", n, len(p.t.GPUs))
	}
	return p.t.expand(n), ""
}

// resolveUUID finds the one GPU (or MIG device) whose UUID starts with e.
func (p *visibleParser) resolveUUID(e string, mig bool) (VisibleSet, string) {
	var found VisibleSet
	for i, d := range p.t.GPUs {
		if !mig && strings.HasPrefix(d.UUID, e) {
			found = append(found, VisibleDevice{GPU: i, MIG: -1, UUID: d.UUID})
		}
		for j, m := range d.MIGDevices {
			if mig && strings.HasPrefix(m.UUID, e) {
				found = append(found, VisibleDevice{GPU: i, MIG: j, UUID: m.UUID})
			}
		}
	}
	switch {
	case len(found) == 0:
		return nil, fmt.Sprintf("%q matches no device", e)
	case len(found) > 1:
		return nil, fmt.Sprintf("%q is ambiguous (%s)", e, strings.Join(found.UUIDs(), ", "))
	case found[0].MIG < 0:
		return p.t.expand(found[0].GPU), ""
	}
	return found, ""
}

// seen reports whether any of devs is already in p.out.
func (p *visibleParser) seen(devs VisibleSet) bool {
	for _, d := range devs {
		for _, o := range p.out {
			if o.UUID == d.UUID {
				return true
			}
		}
	}
	return false
}

// strtoul reads a non-negative decimal number the way C's strtoul does for
// CUDA: leading spaces and a '+' skipped, digits read up to the first
// non-digit. It fails on no digits, a '-' sign or overflow past 1<<31.
func strtoul(s string) (int, bool) {
	s = strings.TrimLeft(s, " \t\n\v\f\r")
	s = strings.TrimPrefix(s, "+")
	n, digits := 0, 0
	for _, c := range s {
		if c < '0' || c > '9' {
			break
		}
		n = n*10 + int(c-'0')
		digits++
		if n > 1<<31 {
			return 0, false
		}
	}
	return n, digits > 0
}

// expand returns GPU i as CUDA enumerates it: the whole GPU, or its MIG
// devices when MIG mode is on.
func (t *Topology) expand(i int) VisibleSet {
	d := t.GPUs[i]
	if len(d.MIGDevices) == 0 {
		return VisibleSet{{GPU: i, MIG: -1, UUID: d.UUID}}
	}
	out := make(VisibleSet, len(d.MIGDevices))
	for j, m := range d.MIGDevices {
		out[j] = VisibleDevice{GPU: i, MIG: j, UUID: m.UUID}
	}
	return out
}

func (t *Topology) mixedModels() bool {
	for _, d := range t.GPUs {
		if d.Name != t.GPUs[0].Name {
			return true
		}
	}
	return false
}
