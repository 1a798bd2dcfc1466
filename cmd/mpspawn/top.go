package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/mpspawn/mpspawn/launcher/live"
	"github.com/urfave/cli/v2"
	"golang.org/x/term"
)

func topCommand() *cli.Command {
	return &cli.Command{
		Name:      "top",
		Usage:     "show a job's ranks live, refreshed every second",
		UsageText: "mpspawn top [PID|RUN_ID]\nmpspawn top --rdzv-endpoint HOST:PORT --rdzv-id ID [--rdzv-backend etcd|c10d] [--rdzv-conf K=V,...]",
		Description: "The table of mpspawn status PID, refreshed every second, with one line per job (node)\n" +
			"above it: elapsed time, ranks by state, the slowest rank's output age. Keys: c sorts by\n" +
			"CPU, o by output age, r by rank; q quits. With no argument it shows this user's only\n" +
			"job (or asks which). No colours when NO_COLOR is set or stdout is not a terminal; then\n" +
			"each refresh is printed below the last. With --rdzv-endpoint and --rdzv-id, every node's\n" +
			"ranks as read from the job's etcd (see mpspawn status).",
		Flags:  remoteFlags(),
		Action: topAction,
		OnUsageError: func(_ *cli.Context, err error, _ bool) error {
			return usageError{err}
		},
	}
}

// topView is what top shows and how.
type topView struct {
	src   jobSource
	key   sortKey
	tty   bool // stdout is a terminal: redraw in place
	color bool
	raw   bool // the terminal is in raw mode: lines end in \r\n
	out   *os.File
	w     io.Writer
}

func topAction(c *cli.Context) error {
	if c.NArg() > 1 {
		return usagef("top: unexpected argument %q", c.Args().Get(1))
	}
	if err := checkRemoteFlags(c); err != nil {
		return err
	}
	arg := c.Args().First()
	if arg == "" && !c.IsSet(fRdzvEndpoint) {
		jobs, err := live.List()
		if err != nil {
			return err
		}
		if len(jobs) != 1 {
			writeJobs(c.App.Writer, jobs, time.Now())
			return usagef("top: %d jobs of this user run here; give one's pid or run id", len(jobs))
		}
		arg = fmt.Sprint(jobs[0].Pid)
	}
	src, err := sourceOf(c, arg)
	if err != nil {
		return err
	}
	if _, err := src(c.Context); err != nil {
		return err
	}
	v := &topView{src: src, key: byCPU, w: c.App.Writer}
	if f, ok := c.App.Writer.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
		v.tty, v.out = true, f
		v.color = os.Getenv("NO_COLOR") == ""
	}
	keys := make(chan byte, 8)
	if term.IsTerminal(int(os.Stdin.Fd())) {
		old, err := term.MakeRaw(int(os.Stdin.Fd()))
		if err == nil {
			v.raw = true
			defer term.Restore(int(os.Stdin.Fd()), old)
		}
	}
	go readKeys(os.Stdin, keys) // ends with the process: a read cannot be cancelled
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP)
	defer stop()
	return v.loop(ctx, keys)
}

// loop draws every second, and on each key, until q, a signal, or the
// job's end.
func (v *topView) loop(ctx context.Context, keys <-chan byte) error {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		sts, err := v.src(ctx)
		var ue usageError
		if errors.As(err, &ue) {
			v.print("mpspawn top: the job has ended\n")
			return nil
		}
		if err != nil {
			return err
		}
		v.draw(sts)
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
		case k := <-keys:
			switch k {
			case 'q', 'Q', 3: // 3: Ctrl-C in raw mode
				return nil
			case 'c':
				v.key = byCPU
			case 'o', 'a':
				v.key = byAge
			case 'r':
				v.key = byRank
			}
		}
	}
}

// readKeys sends each byte read from r.
func readKeys(r io.Reader, keys chan<- byte) {
	var b [1]byte
	for {
		if n, err := r.Read(b[:]); err != nil || n == 0 {
			return
		}
		keys <- b[0]
	}
}

// ANSI: clear the screen and go home; reverse video; red; reset.
const (
	ansiHome    = "\x1b[H\x1b[2J"
	ansiReverse = "\x1b[7m"
	ansiRed     = "\x1b[31m"
	ansiReset   = "\x1b[0m"
)

// draw writes one screen.
func (v *topView) draw(sts []*live.State) {
	width, height := 80, 24
	if v.tty {
		if w, h, err := term.GetSize(int(v.out.Fd())); err == nil && w > 0 && h > 0 {
			width, height = w, h
		}
	}
	var b bytes.Buffer
	now := time.Now()
	for _, st := range sts {
		fmt.Fprintln(&b, cut(jobLine(st, now), width))
	}
	fmt.Fprintln(&b, cut(fmt.Sprintf("sorted by %s; keys: c CPU, o output age, r rank, q quit", v.key), width))
	var table bytes.Buffer
	rows := rankRows(sts, v.key)
	if v.tty && len(rows) > height-len(sts)-3 {
		rows = rows[:max(height-len(sts)-3, 1)]
	}
	writeRanks(&table, rows, width)
	lines := strings.Split(strings.TrimSuffix(table.String(), "\n"), "\n")
	for i, l := range lines {
		switch {
		case v.color && i == 0:
			l = ansiReverse + l + ansiReset
		case v.color && i-1 < len(rows) && i > 0 && (rows[i-1].Straggler || rows[i-1].ExitCode != nil && *rows[i-1].ExitCode != 0 && !rows[i-1].StoppedByMpspawn):
			l = ansiRed + l + ansiReset
		}
		b.WriteString(l + "\n")
	}
	s := b.String()
	if v.tty {
		s = ansiHome + s
	} else {
		s += "\n"
	}
	v.print(s)
}

// print writes s, with \r\n line ends in raw mode.
func (v *topView) print(s string) {
	if v.raw {
		s = strings.ReplaceAll(s, "\n", "\r\n")
	}
	_, _ = io.WriteString(v.w, s)
}
