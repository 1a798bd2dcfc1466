package main

import (
	"io"
	"strings"

	"github.com/urfave/cli/v2"
)

// flagNames maps every name of fs (and help/version) to whether the flag
// takes a value.
func flagNames(fs []cli.Flag) map[string]bool {
	names := map[string]bool{"help": false, "h": false}
	for _, f := range fs {
		_, isBool := f.(*cli.BoolFlag)
		for _, n := range f.Names() {
			names[n] = !isBool
		}
	}
	return names
}

// checkFlags finds the first flag in args (the launcher's own, up to the
// script, "--" or a subcommand) that is not one of fs, and words it as the
// user typed it, with the nearest known flag: Go's flag package would say
// "-nproc-per-nod", with one dash and no hint.
func checkFlags(args []string, fs []cli.Flag, cmd string) error {
	names := flagNames(fs)
	for i := 0; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			return nil
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		dashed := strings.ReplaceAll(name, "_", "-")
		valued, known := names[dashed]
		if !known {
			typed, _, _ := strings.Cut(a, "=")
			if near := nearestFlag(dashed, names); near != "" {
				return usagef("%sunknown flag %s: did you mean %s? (%s --help lists them)", cmdPrefix(cmd), typed, near, cmdName(cmd))
			}
			return usagef("%sunknown flag %s (%s --help lists them)", cmdPrefix(cmd), typed, cmdName(cmd))
		}
		if valued && !hasValue {
			if i+1 == len(args) {
				typed, _, _ := strings.Cut(a, "=")
				return usagef("%s%s needs a value (%s --help says which)", cmdPrefix(cmd), typed, cmdName(cmd))
			}
			i++ // the flag's value
		}
	}
	return nil
}

// nearestFlag is the known flag closest to name (by edit distance, or the
// one name is a prefix of), written with its dashes; "" when none is close.
func nearestFlag(name string, names map[string]bool) string {
	best, bestD := "", len(name)/3+2
	for n := range names {
		if len(n) < 2 {
			continue
		}
		d := editDistance(name, n)
		if strings.HasPrefix(n, name) && len(name) >= 3 {
			d = min(d, 1)
		}
		if d < bestD || (d == bestD && best != "" && n < best) {
			best, bestD = n, d
		}
	}
	if best == "" {
		return ""
	}
	return "--" + best
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

// subcommandArgs returns the arguments after a subcommand's name when args
// (without the program name) start with one.
func subcommandArgs(args []string, cmds []*cli.Command) (*cli.Command, []string) {
	if len(args) == 0 {
		return nil, nil
	}
	for _, c := range cmds {
		if c.HasName(args[0]) {
			return c, args[1:]
		}
	}
	return nil, nil
}

// checkArgs checks the launcher's flags, or a subcommand's.
func checkArgs(app *cli.App, args []string) error {
	if cmd, rest := subcommandArgs(args[1:], app.Commands); cmd != nil {
		return checkFlags(rest, cmd.Flags, cmd.Name)
	}
	return checkFlags(args[1:], app.Flags, "")
}

// subcommandHelp writes a subcommand's help when args ask for it, and
// reports whether they did.
func subcommandHelp(app *cli.App, args []string, w io.Writer) bool {
	cmd, rest := subcommandArgs(args[1:], app.Commands)
	if cmd == nil || !launcherFlag(append([]string{cmd.Name}, rest...), cmd.Flags, "help", "h") {
		return false
	}
	writeCommandHelp(w, cmd, termWidth(w))
	return true
}

func cmdPrefix(cmd string) string {
	if cmd == "" {
		return ""
	}
	return cmd + ": "
}

func cmdName(cmd string) string {
	return strings.TrimSpace("mpspawn " + cmd)
}
