package main

import (
	"bufio"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
)

// The hosts of `mpspawn --hostfile FILE` or `--hosts a:8,b:8`, in node-rank
// order, as DeepSpeed's and MPI's launchers spell them:
//
//	# DeepSpeed        # MPI
//	node1 slots=8      node1:8
//	node2 slots=8      node2 slots=8 max_slots=8
//
// --include and --exclude take DeepSpeed's form, hosts separated by "@",
// each with an optional list of slots (GPU indices): "node1:0,1@node2".

// hostSlots is one host and the slots (local GPU indices, or CPU rank
// slots) of it the job uses.
type hostSlots struct {
	Host  string
	Slots []int // 0..n-1 unless --include/--exclude chose some
}

// maxSlots bounds a host's slots: a typo (slots=80000) is refused, not
// run as 80,000 ranks.
const maxSlots = 4096

// readHostfile reads and parses the hostfile at path.
func readHostfile(path string) ([]hostSlots, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("--hostfile: %w", err)
	}
	defer f.Close()
	return parseHostfile(path, f)
}

// parseHostfile parses a hostfile; errors name the file and line.
func parseHostfile(name string, r io.Reader) ([]hostSlots, error) {
	var hosts []hostSlots
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line, _, _ := strings.Cut(sc.Text(), "#")
		fields := strings.Fields(line)
		if len(fields) == 0 {
			continue
		}
		h, err := parseHostLine(fields)
		if err != nil {
			return nil, fmt.Errorf("%s:%d: %w", name, n, err)
		}
		if i := indexHost(hosts, h.Host); i >= 0 {
			return nil, fmt.Errorf("%s:%d: host %s is listed twice", name, n, h.Host)
		}
		hosts = append(hosts, h)
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", name, err)
	}
	if len(hosts) == 0 {
		return nil, fmt.Errorf("%s: no hosts", name)
	}
	return hosts, nil
}

// parseHostLine parses "host slots=N [max_slots=M]", "host:N" or "host".
func parseHostLine(fields []string) (hostSlots, error) {
	host, count, hasCount := strings.Cut(fields[0], ":")
	slots := 1
	if hasCount {
		if len(fields) > 1 {
			return hostSlots{}, fmt.Errorf("%q: host:N takes nothing after it", strings.Join(fields, " "))
		}
		n, err := parseSlots(count)
		if err != nil {
			return hostSlots{}, err
		}
		slots = n
	}
	for _, f := range fields[1:] {
		k, v, ok := strings.Cut(f, "=")
		switch {
		case ok && k == "slots":
			n, err := parseSlots(v)
			if err != nil {
				return hostSlots{}, err
			}
			slots = n
		case ok && k == "max_slots":
			if _, err := parseSlots(v); err != nil {
				return hostSlots{}, err
			}
		default:
			return hostSlots{}, fmt.Errorf("%q: want \"host slots=N\" or \"host:N\"", strings.Join(fields, " "))
		}
	}
	if err := checkHostName(host); err != nil {
		return hostSlots{}, err
	}
	return hostSlots{Host: host, Slots: seq(slots)}, nil
}

func parseSlots(s string) (int, error) {
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > maxSlots {
		return 0, fmt.Errorf("slots %q: want a number from 1 to %d", s, maxSlots)
	}
	return n, nil
}

// checkHostName refuses what ssh would take for an option or that cannot
// be a host (or user@host, or an ssh config alias).
func checkHostName(h string) error {
	if h == "" || strings.HasPrefix(h, "-") || strings.ContainsAny(h, " \t'\"\\;&|$`<>()*?[]{}") {
		return fmt.Errorf("host %q: not a host name", h)
	}
	return nil
}

// parseHostList parses --hosts: "a:8,b:8" (a host without ":N" has 1 slot).
func parseHostList(s string) ([]hostSlots, error) {
	var hosts []hostSlots
	for _, item := range strings.Split(s, ",") {
		item = strings.TrimSpace(item)
		if item == "" {
			return nil, fmt.Errorf("--hosts %q: an empty host", s)
		}
		h, err := parseHostLine([]string{item})
		if err != nil {
			return nil, fmt.Errorf("--hosts %q: %w", s, err)
		}
		if indexHost(hosts, h.Host) >= 0 {
			return nil, fmt.Errorf("--hosts %q: host %s is listed twice", s, h.Host)
		}
		hosts = append(hosts, h)
	}
	return hosts, nil
}

// filterHosts applies --include or --exclude (at most one of them) to
// hosts: DeepSpeed's "host1:0,1@host2", a host alone meaning all its
// slots. Hosts left without slots are dropped; the order is the hosts'.
func filterHosts(hosts []hostSlots, include, exclude string) ([]hostSlots, error) {
	switch {
	case include != "" && exclude != "":
		return nil, fmt.Errorf("--include and --exclude cannot be combined")
	case include == "" && exclude == "":
		return hosts, nil
	}
	flag, spec := "--include", include
	if exclude != "" {
		flag, spec = "--exclude", exclude
	}
	chosen := map[string][]int{} // host → slots named; nil: all of them
	for _, part := range strings.Split(spec, "@") {
		host, list, hasList := strings.Cut(strings.TrimSpace(part), ":")
		i := indexHost(hosts, host)
		if i < 0 {
			return nil, fmt.Errorf("%s %q: host %q is not in the host list", flag, spec, host)
		}
		if !hasList {
			chosen[host] = nil
			continue
		}
		for _, s := range strings.Split(list, ",") {
			n, err := strconv.Atoi(strings.TrimSpace(s))
			if err != nil || !slices.Contains(hosts[i].Slots, n) {
				return nil, fmt.Errorf("%s %q: %s has no slot %q (it has %d)", flag, spec, host, s, len(hosts[i].Slots))
			}
			chosen[host] = append(chosen[host], n)
		}
	}
	var out []hostSlots
	for _, h := range hosts {
		named, ok := chosen[h.Host]
		var keep []int
		for _, s := range h.Slots {
			in := ok && (named == nil || slices.Contains(named, s))
			if in == (include != "") {
				keep = append(keep, s)
			}
		}
		if len(keep) > 0 {
			out = append(out, hostSlots{Host: h.Host, Slots: keep})
		}
	}
	if len(out) == 0 {
		return nil, fmt.Errorf("%s %q leaves no host", flag, spec)
	}
	return out, nil
}

func indexHost(hosts []hostSlots, host string) int {
	return slices.IndexFunc(hosts, func(h hostSlots) bool { return h.Host == host })
}

func seq(n int) []int {
	s := make([]int, n)
	for i := range s {
		s[i] = i
	}
	return s
}
