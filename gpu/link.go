package gpu

import (
	"fmt"
	"strconv"
	"strings"
)

// Link is how two GPUs are connected, in the vocabulary of
// `nvidia-smi topo -m`, from best to worst:
//
//	X     the GPU itself (the diagonal of the matrix)
//	NV<n> n bonded NVLinks (NVSwitch systems report NV12, NV18, ...)
//	PIX   at most a single PCIe bridge
//	PXB   several PCIe bridges, without the PCIe host bridge
//	PHB   a PCIe host bridge (typically the CPU)
//	NODE  PCIe and the interconnect between host bridges within a NUMA node
//	SYS   PCIe and the SMP interconnect between NUMA nodes (QPI/UPI, xGMI)
type Link string

// The link kinds other than NV<n>, which NVLink builds.
const (
	LinkSelf Link = "X"
	LinkPIX  Link = "PIX"
	LinkPXB  Link = "PXB"
	LinkPHB  Link = "PHB"
	LinkNODE Link = "NODE"
	LinkSYS  Link = "SYS"
)

// NVLink returns the link kind for n bonded NVLinks, "NV<n>".
func NVLink(n int) Link { return Link("NV" + strconv.Itoa(n)) }

// NVLinks returns the number of bonded NVLinks l stands for: n for NV<n>,
// 0 for every other kind.
func (l Link) NVLinks() int {
	s, ok := strings.CutPrefix(string(l), "NV")
	if !ok {
		return 0
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || s[0] == '+' {
		return 0
	}
	return n
}

// pcieScore is go-gpuallocator's score for each PCIe proximity
// (besteffort_policy.go: P2PLinkSameBoard 60 down to P2PLinkCrossCPU 10;
// nvidia-smi reports no "same board" kind, so PIX is the best here).
var pcieScore = map[Link]int{LinkPIX: 50, LinkPXB: 40, LinkPHB: 30, LinkNODE: 20, LinkSYS: 10}

// Proximity ranks l for placement, higher being closer, the way NVIDIA's
// go-gpuallocator scores a pair of GPUs: 100 per NVLink, so that NVLink
// always weighs most, then PCIe proximity PIX 50 > PXB 40 > PHB 30 > NODE 20 >
// SYS 10. X and unknown kinds rank 0.
func (l Link) Proximity() int {
	if n := l.NVLinks(); n > 0 {
		return 100 * n
	}
	return pcieScore[l]
}

// Valid reports whether l is a link kind nvidia-smi reports.
func (l Link) Valid() bool {
	return l == LinkSelf || l.NVLinks() > 0 || pcieScore[l] > 0
}

// UnmarshalText reads a link kind, rejecting those nvidia-smi never reports.
// Like time.Time's and net.IP's, its error has no package prefix: the
// decoder that calls it gives the context (see TopologyError).
func (l *Link) UnmarshalText(b []byte) error {
	v := Link(b)
	if !v.Valid() {
		return fmt.Errorf("unknown link kind %q (want X, NV<n>, PIX, PXB, PHB, NODE or SYS)", string(b))
	}
	*l = v
	return nil
}
