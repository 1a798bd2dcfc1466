//go:build linux && cgo

package gpu

import (
	"errors"
	"fmt"
	"math/bits"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/NVIDIA/go-nvml/pkg/nvml"
	"github.com/mpspawn/mpspawn/place"
)

// NVMLBuiltIn reports whether this build can load NVML (Linux, with cgo).
const NVMLBuiltIn = true

// NVML is the NVML library discovery reads GPUs through: go-nvml's binding
// of libnvidia-ml.so.1 in production (newNVML), go-nvml's mocks in tests.
// Besides the device queries it must answer Extensions().LookupSymbol, which
// discovery asks before the calls that older drivers lack.
type NVML = nvml.Interface

// newNVML returns the system's NVML library; nothing is loaded until Init.
func newNVML() NVML { return nvml.New() }

// minAffinityCPUs is the least number of CPUs GetCpuAffinity is asked to
// cover. CPU numbers can exceed runtime.NumCPU (offline CPUs, a restricted
// affinity), and a mask longer than the node needs only adds zero words.
const minAffinityCPUs = 4096

// Symbols of NVML calls that older drivers lack. go-nvml calls into
// libnvidia-ml.so.1 without checking, and a missing symbol kills the
// process, so these are looked up first.
const (
	symNumaNodeID         = "nvmlDeviceGetNumaNodeId"
	symNvLinkRemoteDevice = "nvmlDeviceGetNvLinkRemoteDeviceType"
)

// sysfsPCIDevices is where sysfs lists PCI devices by bus id, under its
// root.
const sysfsPCIDevices = "bus/pci/devices"

// maxNUMANode bounds the NUMA node numbers taken from NVML: NVML reports an
// unknown node as an unsigned -1, which reads as 2^32-1.
const maxNUMANode = 1 << 16

// nvmlGPUs initialises lib, reads every GPU and the links between them, and
// shuts lib down. sysfs is the sysfs root ("/sys" in production; tests pass
// a temporary directory), read where NVML cannot tell a GPU's CPUs or NUMA
// node.
//
// An error is an *NVMLError, unwrapping to ErrNoNVML when the library is
// not installed and to ErrNVMLFailed when it failed; warnings are one-line
// notes, with no package prefix, about data that could not be read and was
// left out or guessed. Zero GPUs is not an error:
// the slices are then empty.
func nvmlGPUs(lib NVML, sysfs string) (gpus []Device, links [][]Link, warnings []string, err error) {
	switch ret := lib.Init(); ret {
	case nvml.SUCCESS:
	case nvml.ERROR_LIBRARY_NOT_FOUND:
		return nil, nil, nil, &NVMLError{Op: "init", GPU: -1, Detail: "libnvidia-ml.so.1 could not be loaded", Err: ErrNoNVML}
	default:
		return nil, nil, nil, &NVMLError{Op: "init", GPU: -1, Detail: fmt.Sprint(ret), Err: ErrNVMLFailed}
	}
	r := &nvmlReader{lib: lib, sysfs: sysfs, symbols: map[string]bool{}}
	defer func() {
		if ret := lib.Shutdown(); ret != nvml.SUCCESS {
			warnings = append(warnings, fmt.Sprintf("NVML shutdown failed: %v", ret))
		}
	}()
	gpus, handles, err := r.devices()
	if err != nil {
		return nil, nil, r.warnings, err
	}
	return gpus, r.links(gpus, handles), nonNil(r.warnings), nil
}

// nvmlReader reads one initialised NVML library. It lives for one
// nvmlGPUs call.
type nvmlReader struct {
	lib      NVML
	sysfs    string
	symbols  map[string]bool // LookupSymbol answers, by symbol
	warnings []string
}

// warn records a warning, a note for people with no package prefix.
func (r *nvmlReader) warn(format string, args ...any) {
	r.warnings = append(r.warnings, fmt.Sprintf(format, args...))
}

// has reports whether the driver's library has the given symbol.
func (r *nvmlReader) has(symbol string) bool {
	ok, seen := r.symbols[symbol]
	if !seen {
		ext := r.lib.Extensions()
		ok = ext != nil && ext.LookupSymbol(symbol) == nil
		r.symbols[symbol] = ok
	}
	return ok
}

// queryError reports a failed query of GPU i.
func queryError(i int, query string, ret nvml.Return) error {
	return &NVMLError{Op: query, GPU: i, Detail: fmt.Sprint(ret), Err: ErrNVMLFailed}
}

// devices reads every GPU in NVML index order, with its handle.
func (r *nvmlReader) devices() ([]Device, []nvml.Device, error) {
	n, ret := r.lib.DeviceGetCount()
	if ret != nvml.SUCCESS {
		return nil, nil, &NVMLError{Op: "device count", GPU: -1, Detail: fmt.Sprint(ret), Err: ErrNVMLFailed}
	}
	gpus := make([]Device, 0, n)
	handles := make([]nvml.Device, 0, n)
	for i := range n {
		h, ret := r.lib.DeviceGetHandleByIndex(i)
		if ret != nvml.SUCCESS {
			return nil, nil, queryError(i, "handle", ret)
		}
		d, err := r.device(i, h)
		if err != nil {
			return nil, nil, err
		}
		gpus = append(gpus, d)
		handles = append(handles, h)
	}
	return gpus, handles, nil
}

// device reads GPU i through its handle h.
func (r *nvmlReader) device(i int, h nvml.Device) (Device, error) {
	uuid, ret := h.GetUUID()
	if ret != nvml.SUCCESS {
		return Device{}, queryError(i, "uuid", ret)
	}
	name, ret := h.GetName()
	if ret != nvml.SUCCESS {
		return Device{}, queryError(i, "name", ret)
	}
	pci, ret := h.GetPciInfo()
	if ret != nvml.SUCCESS {
		return Device{}, queryError(i, "pci info", ret)
	}
	mem, ret := h.GetMemoryInfo()
	if ret != nvml.SUCCESS {
		return Device{}, queryError(i, "memory info", ret)
	}
	d := Device{Index: i, UUID: uuid, Name: name, PCIBusID: cString(pci.BusId[:]), MemoryBytes: mem.Total}
	d.CPUAffinity = r.cpuAffinity(i, h, d.PCIBusID)
	d.NUMANode = r.numaNode(h, d.PCIBusID)
	migs, err := r.migDevices(i, h)
	if err != nil {
		return Device{}, err
	}
	d.MIGDevices = migs
	return d, nil
}

// cpuAffinity returns the CPUs closest to GPU i: NVML's ideal affinity,
// else the PCI device's local_cpulist in sysfs, else the empty set and a
// warning.
func (r *nvmlReader) cpuAffinity(i int, h nvml.Device, busID string) place.CPUSet {
	mask, ret := h.GetCpuAffinity(max(runtime.NumCPU(), minAffinityCPUs))
	if ret == nvml.SUCCESS {
		if set := cpuSetFromMask(mask); set.Len() > 0 {
			return set
		}
		ret = nvml.ERROR_NO_DATA // an empty mask tells nothing
	}
	set, err := r.sysfsCPUList(busID)
	if err != nil {
		r.warn("gpu %d: cpu affinity unknown (nvml: %v; sysfs: %v)", i, ret, err)
		return place.CPUSet{}
	}
	return set
}

// sysfsCPUList reads the local_cpulist of the PCI device busID, failing
// when it is missing or empty.
func (r *nvmlReader) sysfsCPUList(busID string) (place.CPUSet, error) {
	s, err := r.readPCI(busID, "local_cpulist")
	if err != nil {
		return nil, err
	}
	set, err := place.ParseCPUList(s)
	if err != nil {
		return nil, err
	}
	if set.Len() == 0 {
		return nil, errors.New("local_cpulist is empty")
	}
	return set, nil
}

// numaNode returns the NUMA node of a GPU: NVML's answer where the driver
// has the call, else the PCI device's numa_node in sysfs, else -1.
func (r *nvmlReader) numaNode(h nvml.Device, busID string) int {
	if r.has(symNumaNodeID) {
		if n, ret := h.GetNumaNodeId(); ret == nvml.SUCCESS && n >= 0 && n < maxNUMANode {
			return n
		}
	}
	s, err := r.readPCI(busID, "numa_node")
	if err != nil {
		return -1
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 0 { // the kernel writes -1 where it does not know
		return -1
	}
	return n
}

// readPCI reads the sysfs attribute name of the PCI device NVML calls
// busID, without surrounding space.
func (r *nvmlReader) readPCI(busID, name string) (string, error) {
	if busID == "" {
		return "", errors.New("no pci bus id")
	}
	b, err := os.ReadFile(filepath.Join(r.sysfs, sysfsPCIDevices, sysfsBusID(busID), name))
	if err != nil {
		return "", err
	}
	return strings.TrimSpace(string(b)), nil
}

// migDevices lists the MIG devices of GPU i when MIG mode is on; it is
// empty, not nil, otherwise.
func (r *nvmlReader) migDevices(i int, h nvml.Device) ([]MIGDevice, error) {
	migs := []MIGDevice{}
	current, _, ret := h.GetMigMode()
	switch {
	case ret == nvml.ERROR_NOT_SUPPORTED:
		return migs, nil // a GPU without MIG
	case ret != nvml.SUCCESS:
		r.warn("gpu %d: mig mode unknown (%v); no mig devices listed", i, ret)
		return migs, nil
	case current != nvml.DEVICE_MIG_ENABLE:
		return migs, nil
	}
	n, ret := h.GetMaxMigDeviceCount()
	if ret != nvml.SUCCESS {
		return nil, queryError(i, "max mig device count", ret)
	}
	for j := range n {
		m, ret := h.GetMigDeviceHandleByIndex(j)
		if ret == nvml.ERROR_NOT_FOUND || ret == nvml.ERROR_INVALID_ARGUMENT {
			continue // no MIG device in this slot
		}
		if ret != nvml.SUCCESS {
			return nil, queryError(i, fmt.Sprintf("mig device %d handle", j), ret)
		}
		uuid, ret := m.GetUUID()
		if ret != nvml.SUCCESS {
			return nil, queryError(i, fmt.Sprintf("mig device %d uuid", j), ret)
		}
		attrs, ret := m.GetAttributes()
		profile := ""
		if ret == nvml.SUCCESS {
			profile = migProfile(attrs)
		} else {
			r.warn("gpu %d: mig device %s: profile unknown (%v)", i, uuid, ret)
		}
		migs = append(migs, MIGDevice{UUID: uuid, Profile: profile})
	}
	return migs, nil
}

// migProfile names a MIG device's profile the way nvidia-smi does:
// "<g>g.<m>gb" for g GPU slices and m GB of memory (rounded up), with a
// "<c>c." prefix when the compute instance has fewer slices than its GPU
// instance, as in "1c.3g.20gb".
func migProfile(a nvml.DeviceAttributes) string {
	g, c := a.GpuInstanceSliceCount, a.ComputeInstanceSliceCount
	gb := (a.MemorySizeMB + 1023) / 1024
	if c == g {
		return fmt.Sprintf("%dg.%dgb", g, gb)
	}
	return fmt.Sprintf("%dc.%dg.%dgb", c, g, gb)
}

// nvlinkCount is one GPU's active NVLinks: direct[j] links to GPU j, and
// switches links to NVSwitches.
type nvlinkCount struct {
	direct   []int
	switches int
}

// links returns the link matrix of gpus, whose handles are given in the
// same order: NVLink where there is any, else the PCIe path NVML reports.
// Where the path is unknown the pair is SYS, with one warning for all such
// pairs.
func (r *nvmlReader) links(gpus []Device, handles []nvml.Device) [][]Link {
	byBus := map[string]int{}
	for i, d := range gpus {
		if d.PCIBusID != "" {
			byBus[sysfsBusID(d.PCIBusID)] = i
		}
	}
	nv := make([]nvlinkCount, len(handles))
	for i, h := range handles {
		nv[i] = r.nvlinks(h, byBus, len(handles))
	}
	links := make([][]Link, len(gpus))
	for i := range links {
		links[i] = make([]Link, len(gpus))
		links[i][i] = LinkSelf
	}
	var unknown []string
	for i := range links {
		for j := i + 1; j < len(links); j++ {
			l, err := pairLink(nv, handles, i, j)
			if err != nil {
				unknown = append(unknown, fmt.Sprintf("%d-%d (%v)", i, j, err))
			}
			links[i][j], links[j][i] = l, l
		}
	}
	if len(unknown) > 0 {
		r.warn("pcie path unknown between gpus %s; shown as SYS", strings.Join(unknown, ", "))
	}
	return links
}

// nvlinks counts the active NVLinks of the GPU with handle h among n GPUs,
// byBus mapping their sysfs bus ids to indices.
func (r *nvmlReader) nvlinks(h nvml.Device, byBus map[string]int, n int) nvlinkCount {
	c := nvlinkCount{direct: make([]int, n)}
	for l := range nvml.NVLINK_MAX_LINKS {
		state, ret := h.GetNvLinkState(l)
		if ret == nvml.ERROR_NOT_SUPPORTED || ret == nvml.ERROR_INVALID_ARGUMENT {
			break // no NVLink, or no more links on this GPU
		}
		if ret != nvml.SUCCESS || state != nvml.FEATURE_ENABLED {
			continue
		}
		pci, ret := h.GetNvLinkRemotePciInfo(l)
		if ret != nvml.SUCCESS {
			continue
		}
		if j, ok := byBus[sysfsBusID(cString(pci.BusId[:]))]; ok {
			c.direct[j]++
		} else if r.remoteIsSwitch(h, l) {
			c.switches++
		}
	}
	return c
}

// remoteIsSwitch reports whether NVLink l of h, whose far end is not one of
// the GPUs, ends at an NVSwitch. Where NVML cannot tell, it is taken to.
func (r *nvmlReader) remoteIsSwitch(h nvml.Device, l int) bool {
	if !r.has(symNvLinkRemoteDevice) {
		return true
	}
	t, ret := h.GetNvLinkRemoteDeviceType(l)
	return ret != nvml.SUCCESS || t != nvml.NVLINK_DEVICE_TYPE_GPU && t != nvml.NVLINK_DEVICE_TYPE_IBMNPU
}

// pairLink returns the link between GPUs i and j: NV<n> for n direct
// NVLinks; NV<n> when both reach NVSwitches, n being the fewer of their
// switch links; else the PCIe path, or SYS and an error when it is unknown.
func pairLink(nv []nvlinkCount, handles []nvml.Device, i, j int) (Link, error) {
	if d := max(nv[i].direct[j], nv[j].direct[i]); d > 0 {
		return NVLink(d), nil
	}
	if nv[i].switches > 0 && nv[j].switches > 0 {
		return NVLink(min(nv[i].switches, nv[j].switches)), nil
	}
	level, ret := handles[i].GetTopologyCommonAncestor(handles[j])
	if ret != nvml.SUCCESS {
		return LinkSYS, ret
	}
	return pcieLink(level)
}

// pcieLink translates NVML's common-ancestor level into nvidia-smi's link
// kind.
func pcieLink(level nvml.GpuTopologyLevel) (Link, error) {
	switch level {
	case nvml.TOPOLOGY_INTERNAL, nvml.TOPOLOGY_SINGLE:
		return LinkPIX, nil
	case nvml.TOPOLOGY_MULTIPLE:
		return LinkPXB, nil
	case nvml.TOPOLOGY_HOSTBRIDGE:
		return LinkPHB, nil
	case nvml.TOPOLOGY_NODE:
		return LinkNODE, nil
	case nvml.TOPOLOGY_SYSTEM:
		return LinkSYS, nil
	}
	return LinkSYS, fmt.Errorf("unknown topology level %d", level)
}

// cpuSetFromMask decodes NVML's CPU mask: bit b of word w is CPU
// w*bits.UintSize+b (64 CPUs a word on 64-bit Linux).
func cpuSetFromMask(mask []uint) place.CPUSet {
	var cpus []int
	for w, word := range mask {
		for word != 0 {
			b := bits.TrailingZeros(word)
			cpus = append(cpus, w*bits.UintSize+b)
			word &^= 1 << b
		}
	}
	return place.NewCPUSet(cpus...)
}

// cString converts a NUL-terminated C char array to a string.
func cString[T ~int8 | ~uint8](b []T) string {
	out := make([]byte, 0, len(b))
	for _, c := range b {
		if c == 0 {
			break
		}
		out = append(out, byte(c))
	}
	return string(out)
}

// sysfsBusID converts NVML's PCI bus id ("00000000:07:00.0", an 8-digit
// domain, upper case hex) to the kernel's ("0000:07:00.0", a domain of at
// least 4 digits, lower case hex), which names the device under
// /sys/bus/pci/devices.
func sysfsBusID(busID string) string {
	busID = strings.ToLower(busID)
	domain, rest, ok := strings.Cut(busID, ":")
	if !ok {
		return busID
	}
	d, err := strconv.ParseUint(domain, 16, 32)
	if err != nil {
		return busID
	}
	return fmt.Sprintf("%04x:%s", d, rest)
}
