package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"os/exec"
	"strconv"
	"strings"
	"time"

	"github.com/mpspawn/mpspawn/launcher/job"
)

// A job over ssh: the driver (this mpspawn, given --hostfile or --hosts)
// hosts the rendezvous, checks every host, then starts one mpspawn per
// host through ssh, all at once. Each runs with --ssh-node: it reads its
// environment from the first line of its stdin (so that no secret shows
// in ps) and treats the end of its stdin, the ssh channel the driver holds
// open, as SIGTERM, so that a driver that dies, even by SIGKILL, leaves
// nothing running. The nodes meet in the c10d rendezvous, which stops
// every node's ranks when one fails and gives every node the same root
// cause; each node sends its summary back on stderr, behind a nonce, and
// the driver prints the root cause's once.

// nodeHeader is the first line the driver writes to a node's stdin.
type nodeHeader struct {
	Env   []string `json:"env"`   // NAME=VALUE, set before the node parses its flags
	Nonce string   `json:"nonce"` // marks the node's summary line on stderr
}

// summaryMark starts the stderr line that carries a node's summary.
const summaryMark = "mpspawn-ssh-summary-"

// sshHost is one host of the job, as the driver runs it.
type sshHost struct {
	hostSlots
	rank     int     // its position in the host list
	bin      string  // mpspawn's path there
	logDir   string  // the private directory its node writes the ranks' files in, or ""
	keeper   *keeper // the ssh session that holds the copy --ship made there, or nil
	argv     []string
	header   nodeHeader
	summary  *job.Summary
	lastLine string // ssh's or the node's last stderr line not a rank's
	code     int
}

// sshArgv is the ssh command line that runs remote on host.
func (f *fanout) sshArgv(host, remote string) []string {
	argv := append([]string(nil), f.ssh...)
	argv = append(argv, "-o", "BatchMode=yes", "-o", "ConnectTimeout="+strconv.Itoa(int(f.timeout.Seconds())), host)
	if remote != "" {
		argv = append(argv, remote)
	}
	return argv
}

// HostError is a host that could not be used before the job started.
type HostError struct {
	Host string
	What string // "unreachable", "mpspawn missing", ...
	Line string // ssh's or the host's own last stderr line
}

func (e *HostError) Error() string {
	if e.Line == "" {
		return fmt.Sprintf("host %s: %s", e.Host, e.What)
	}
	return fmt.Sprintf("host %s: %s: %s", e.Host, e.What, e.Line)
}

// lastNonEmpty is the last non-empty line of b.
func lastNonEmpty(b []byte) string {
	lines := strings.Split(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(lines[len(lines)-1])
}

// probeScript prints the path of the first mpspawn found among paths
// (absolute, or names on PATH), or exits 127.
func probeScript(paths []string) string {
	var b strings.Builder
	for _, p := range paths {
		fmt.Fprintf(&b, "command -v %s && exit 0; ", shellQuote(p))
	}
	b.WriteString("exit 127")
	return b.String()
}

// prepare checks that h answers and finds, or ships, mpspawn there, within
// the ssh timeout (and the copy's own time).
func (f *fanout) prepare(ctx context.Context, h *sshHost, binary []byte) error {
	if binary != nil {
		return f.shipTo(ctx, h, binary)
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout+5*time.Second)
	defer cancel()
	argv := f.sshArgv(h.Host, probeScript(f.binCandidates()))
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.WaitDelay = time.Second
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := -1
	if cmd.ProcessState != nil {
		code = cmd.ProcessState.ExitCode()
	}
	switch {
	case ctx.Err() != nil:
		return &HostError{Host: h.Host, What: fmt.Sprintf("no answer within --ssh-timeout %v", f.timeout), Line: lastNonEmpty(stderr.Bytes())}
	case code == 255 || (err != nil && code < 0):
		return &HostError{Host: h.Host, What: "ssh failed", Line: lastNonEmpty(append([]byte(errText(err)), stderr.Bytes()...))}
	case code == 127:
		return &HostError{Host: h.Host, What: fmt.Sprintf("no mpspawn there (looked for %s): install it there (pip install mpspawn), name it with --remote-mpspawn PATH, or pass --ship to copy this one for the job", strings.Join(f.binCandidates(), ", "))}
	case err != nil:
		return &HostError{Host: h.Host, What: "could not prepare it", Line: lastNonEmpty(stderr.Bytes())}
	}
	h.bin = lastNonEmpty(stdout.Bytes())
	return nil
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error() + "\n"
}

// binCandidates are where a host's mpspawn is looked for, in order.
func (f *fanout) binCandidates() []string {
	switch {
	case f.bin != "":
		return []string{f.bin}
	case f.self != "":
		return []string{f.self, "mpspawn"}
	}
	return []string{"mpspawn"}
}

// randomHex is n random bytes in hex.
func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// resolveHost is the address ssh reaches host by (its config's HostName),
// from `ssh -G`, which reads the configuration and connects nowhere.
func (f *fanout) resolveHost(ctx context.Context, host string) string {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	argv := append(append([]string(nil), f.ssh...), "-G", host)
	out, err := exec.CommandContext(ctx, argv[0], argv[1:]...).Output()
	if err != nil {
		return host
	}
	sc := bufio.NewScanner(bytes.NewReader(out))
	for sc.Scan() {
		if k, v, ok := strings.Cut(sc.Text(), " "); ok && k == "hostname" {
			return v
		}
	}
	return host
}

// driverAddr is this machine's address on the route to host: where the
// hosts reach the rendezvous the driver serves.
func driverAddr(host string) (string, error) {
	conn, err := net.Dial("udp", net.JoinHostPort(host, "9")) // sends nothing
	if err != nil {
		return "", fmt.Errorf("no route to %s: %w", host, err)
	}
	defer conn.Close()
	return conn.LocalAddr().(*net.UDPAddr).IP.String(), nil
}

// readSummaryLine parses a node's summary line; nil when line is not one.
func readSummaryLine(line, nonce string) *job.Summary {
	rest, ok := strings.CutPrefix(line, summaryMark+nonce+" ")
	if !ok {
		return nil
	}
	var s job.Summary
	if json.Unmarshal([]byte(rest), &s) != nil {
		return nil
	}
	return &s
}

// writeSummaryLine writes sum as the one line a driver reads.
func writeSummaryLine(w io.Writer, nonce string, sum *job.Summary) error {
	b, err := json.Marshal(sum)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintf(w, "%s%s %s\n", summaryMark, nonce, b)
	return err
}
