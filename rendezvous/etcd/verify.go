package etcd

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/mpspawn/mpspawn/rendezvous"
	"github.com/mpspawn/mpspawn/rendezvous/etcd/internal/gateway"
)

// Bounds on what is read from etcd. Anyone who can write to the run's
// prefix can put anything there: every value read is parsed strictly and
// checked against these before it can change the job; anything else is
// ignored with one warning naming its key.
const (
	maxJoinValue    = 4 << 10  // a node's join record
	maxFailValue    = 64 << 10 // a failure record
	maxMembersValue = 1 << 20  // a round's members
	maxClosedValue  = 64       // "succeeded" or "failed"
	maxMessage      = 8 << 10  // a failure's message, as this node publishes it
	maxKeysRead     = 10000    // keys listed in one read of the run
	maxNProc        = 1 << 16  // a node's ranks
	maxRestart      = 1 << 20  // a round's restart count
	maxNameLen      = 253      // a host name or address
)

// joinRecord is the value of r/<round>/join/<id>: the node, and the
// number of nodes it was started for (nodes that disagree are refused).
type joinRecord struct {
	rendezvous.Node
	MinNodes int `json:"min_nodes"`
	MaxNodes int `json:"max_nodes"`

	rev int64 // the revision of the key it was read from
}

// strictJSON decodes b into v: a value over max bytes, unknown fields and
// trailing data are errors.
func strictJSON(b []byte, max int, v any) error {
	if len(b) > max {
		return fmt.Errorf("value of %d bytes, over the %d allowed", len(b), max)
	}
	d := json.NewDecoder(bytes.NewReader(b))
	d.DisallowUnknownFields()
	if err := d.Decode(v); err != nil {
		return fmt.Errorf("not a valid record: %w", err)
	}
	if d.More() {
		return errors.New("not a valid record: data after it")
	}
	return nil
}

// nodeID is the identity of the node holding lease: unique per launcher
// (two launchers never hold one lease), and bound to the lease its keys
// must be attached to.
func nodeID(addr string, pid int, lease int64) string {
	return fmt.Sprintf("%s-%d-%x", addr, pid, lease)
}

// leaseOf is the lease a node id names; 0 if it names none.
func leaseOf(id string) int64 {
	i := strings.LastIndexByte(id, '-')
	if i < 0 {
		return 0
	}
	l, err := strconv.ParseUint(id[i+1:], 16, 63)
	if err != nil {
		return 0
	}
	return int64(l)
}

// checkName checks a host name or an IP address.
func checkName(what, s string) error {
	if a, err := netip.ParseAddr(s); err == nil && a.Zone() == "" {
		return nil
	}
	ok := s != "" && len(s) <= maxNameLen && s[0] != '-' && s[0] != '.'
	for _, r := range s {
		ok = ok && (r == '-' || r == '.' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
	}
	if !ok {
		return fmt.Errorf("%s %.40q is not a host name or IP address", what, s)
	}
	return nil
}

// checkNode checks a node as a join record or a member states it, in a
// job of at most maxNodes nodes.
func checkNode(n rendezvous.Node, maxNodes int) error {
	switch {
	case n.Position < 0 || n.Position > maxNodes:
		return fmt.Errorf("position %d out of range [0, %d]", n.Position, maxNodes)
	case n.NProc < 1 || n.NProc > maxNProc:
		return fmt.Errorf("nproc %d out of range [1, %d]", n.NProc, maxNProc)
	case n.Port < 1 || n.Port > 65535:
		return fmt.Errorf("port %d out of range [1, 65535]", n.Port)
	case leaseOf(n.ID) == 0 || !strings.HasPrefix(n.ID, n.Addr+"-"):
		return fmt.Errorf("id %.80q is not ADDR-PID-LEASE of its address", n.ID)
	}
	if err := checkName("addr", n.Addr); err != nil {
		return err
	}
	return checkName("host", n.Host)
}

// parseJoin verifies the join record kv of node id: the record is the
// node's own (its id is the key's), and the key is attached to the lease
// that the id names, so that it lives only as long as that node's lease.
func parseJoin(id string, kv *gateway.KeyValue) (joinRecord, error) {
	var j joinRecord
	switch {
	case kv.Lease == 0:
		return j, errors.New("not attached to a lease")
	case kv.Lease != leaseOf(id):
		return j, fmt.Errorf("attached to lease %x, not to its node's lease", kv.Lease)
	}
	if err := strictJSON(kv.Value, maxJoinValue, &j); err != nil {
		return j, err
	}
	if j.ID != id {
		return j, fmt.Errorf("id %.80q differs from its key's", j.ID)
	}
	if j.MinNodes < 1 || j.MaxNodes < j.MinNodes || j.MaxNodes > 1<<20 {
		return j, fmt.Errorf("nodes %d:%d out of range", j.MinNodes, j.MaxNodes)
	}
	return j, checkNode(j.Node, j.MaxNodes)
}

// truncateMessage bounds a failure's message as this node publishes it,
// so that the other nodes take it.
func truncateMessage(s string) string {
	if len(s) <= maxMessage {
		return strings.ToValidUTF8(s, "?")
	}
	s = s[:maxMessage-len(" [...]")]
	for !utf8.ValidString(s) {
		s = s[:len(s)-1]
	}
	return s + " [...]"
}

// NNodesError is another node that was started for a different number
// of nodes than this one: a job's nodes must agree.
type NNodesError struct {
	RunID              string
	MinNodes, MaxNodes int    // this node's
	Addr               string // the other node's address
	OtherMin, OtherMax int    // the other node's
}

func (e *NNodesError) Error() string {
	return fmt.Sprintf("rendezvous: %s: node %s wants %s nodes, this node %s", e.RunID, e.Addr, nodesSpec(e.OtherMin, e.OtherMax), nodesSpec(e.MinNodes, e.MaxNodes))
}

// nodesSpec writes a number of nodes as --nnodes takes it.
func nodesSpec(minN, maxN int) string {
	if minN == maxN {
		return strconv.Itoa(maxN)
	}
	return fmt.Sprintf("%d:%d", minN, maxN)
}

// IdentityError is a join record for this node's identity that another
// launcher wrote.
type IdentityError struct {
	RunID, ID string
}

func (e *IdentityError) Error() string {
	return fmt.Sprintf("rendezvous: %s: another launcher claims this node's identity %s", e.RunID, e.ID)
}

// warnIgnored says, once per key, that a key read from etcd was ignored
// and why.
func (e *Rendezvous) warnIgnored(key string, err error) {
	if _, seen := e.warned.LoadOrStore(key, true); seen {
		return
	}
	fmt.Fprintf(e.cfg.Notes, "mpspawn: warning: rendezvous %s: ignored etcd key %.200q: %v\n", e.cfg.RunID, key, err)
}
