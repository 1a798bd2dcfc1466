package main

import (
	"fmt"
	"io"
	"runtime"
	"runtime/debug"
	"strings"

	"github.com/mpspawn/mpspawn"
	"github.com/mpspawn/mpspawn/gpu"
	"github.com/urfave/cli/v2"
)

// helpExamples end mpspawn --help.
var helpExamples = []string{
	"# 4 ranks of a training script on this node, a free port chosen for you",
	"mpspawn --standalone --nproc-per-node 4 train.py --lr 0.1",
	"# one rank per GPU; a torchrun line works as typed (underscores too)",
	"mpspawn --standalone --nproc_per_node gpu train.py",
	"# node 1 of a 2-node job",
	"mpspawn --nnodes 2 --node-rank 1 --master-addr 10.0.0.1 --master-port 29500 --nproc-per-node 8 train.py",
	"# any program, per-rank log files, rank 0 only on the console",
	"mpspawn --no-python --nproc-per-node 8 --log-dir logs --tee 3 --local-ranks-filter 0 ./my_binary",
	"# the plan for another machine, from its mpspawn gpus --json",
	"mpspawn --topology node.json --nproc-per-node gpu --dry-run",
}

// writeHelp writes mpspawn's help, wrapped to width columns: the usage,
// the description, the flags by category, the commands and examples.
func writeHelp(w io.Writer, app *cli.App, width int) {
	writeHelpFor(w, app.Name, app.Usage, app.UsageText, app.Description, app.Flags, app.Commands, helpExamples, width)
}

// writeCommandHelp writes a subcommand's help, as writeHelp does.
func writeCommandHelp(w io.Writer, cmd *cli.Command, width int) {
	writeHelpFor(w, "mpspawn "+cmd.Name, cmd.Usage, cmd.UsageText, cmd.Description, cmd.Flags, nil, nil, width)
}

func writeHelpFor(w io.Writer, name, usage, usageText, description string, flags []cli.Flag, cmds []*cli.Command, examples []string, width int) {
	width = max(width, 40)
	var b strings.Builder
	b.WriteString(wrap(name+" - "+usage, width, "", "  ") + "\n\nUsage:\n")
	for _, l := range strings.Split(usageText, "\n") {
		b.WriteString(wrap(l, width, "  ", "      ") + "\n")
	}
	for _, para := range strings.Split(description, "\n\n") {
		b.WriteString("\n" + wrap(strings.ReplaceAll(para, "\n", " "), width, "", "") + "\n")
	}
	var cats []string
	byCat := map[string][]cli.Flag{}
	for _, f := range flags {
		cat := ""
		if cf, ok := f.(cli.CategorizableFlag); ok {
			cat = cf.GetCategory()
		}
		if _, seen := byCat[cat]; !seen {
			cats = append(cats, cat)
		}
		byCat[cat] = append(byCat[cat], f)
	}
	if len(byCat[""]) == 0 {
		cats = append(cats, "") // for --help
	}
	for _, cat := range cats {
		title := cat
		if title == "" {
			title = "Other"
			if len(cats) == 1 {
				title = "Flags"
			}
		}
		b.WriteString("\n" + title + ":\n")
		for _, f := range byCat[cat] {
			b.WriteString(flagHelp(f, width))
		}
		if cat == "" {
			b.WriteString("  -h, --help\n" + wrap("show this help", width, "        ", "        ") + "\n")
		}
	}
	if len(cmds) > 0 {
		b.WriteString("\nCommands:\n")
		for _, c := range cmds {
			b.WriteString(wrap(c.Name+": "+c.Usage, width, "  ", "        ") + "\n")
		}
	}
	if len(examples) > 0 {
		b.WriteString("\nExamples:\n")
	}
	for _, e := range examples {
		if strings.HasPrefix(e, "#") {
			b.WriteString(wrap(e, width, "  ", "  # ") + "\n")
			continue
		}
		// Continued with backslashes, so that a copied example still runs.
		lines := strings.Split(wrap(e, width-2, "  ", "      "), "\n")
		b.WriteString(strings.Join(lines, " \\\n") + "\n")
	}
	_, _ = io.WriteString(w, b.String())
}

// flagHelp is one flag's entry: its names and value on one line, its usage
// wrapped and indented below, with a non-empty default that says something
// (never "default: false").
func flagHelp(f cli.Flag, width int) string {
	df, ok := f.(cli.DocGenerationFlag)
	if !ok {
		return ""
	}
	placeholder, usage := unquoteUsage(df.GetUsage())
	var names []string
	for _, n := range f.Names() {
		if len(n) == 1 {
			names = append(names, "-"+n)
		} else {
			names = append(names, "--"+n)
		}
	}
	head := "  " + strings.Join(names, ", ")
	if df.TakesValue() {
		if placeholder == "" {
			placeholder = "VALUE"
		}
		head += " " + placeholder
	}
	if v := df.GetValue(); df.TakesValue() && v != "" {
		usage += fmt.Sprintf(" (default: %s)", v)
	}
	if env := df.GetEnvVars(); len(env) > 0 {
		usage += " [$" + strings.Join(env, ", $") + "]"
	}
	return head + "\n" + wrap(usage, width, "        ", "        ") + "\n"
}

// unquoteUsage takes the first `NAME` out of a usage string, as urfave/cli
// does: the flag's value placeholder.
func unquoteUsage(usage string) (name, rest string) {
	before, after, ok := strings.Cut(usage, "`")
	if !ok {
		return "", usage
	}
	name, after, ok = strings.Cut(after, "`")
	if !ok {
		return "", usage
	}
	return name, before + name + after
}

// wrap breaks s into lines of at most width columns at spaces, the first
// line starting with first and the others with rest. A word longer than a
// line stands on its own line.
func wrap(s string, width int, first, rest string) string {
	var b strings.Builder
	line := first
	empty := true
	for _, word := range strings.Fields(s) {
		if !empty && len(line)+1+len(word) > width {
			b.WriteString(line + "\n")
			line, empty = rest, true
		}
		if !empty {
			line += " "
		}
		line += word
		empty = false
	}
	b.WriteString(line)
	return b.String()
}

// buildCommit is the commit the Makefile stamps in (-X main.buildCommit=),
// for builds without Go's VCS stamp (-buildvcs=false, go install).
var buildCommit string

// writeVersion writes mpspawn's version (the repository's VERSION file),
// the commit it was built from, the Go version and whether GPU support is
// built in.
func writeVersion(w io.Writer) {
	version, commit, dirty := mpspawn.Version(), buildCommit, false
	if commit == "" {
		commit = "unknown"
	}
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				dirty = s.Value == "true"
			}
		}
	}
	if dirty {
		commit += " (modified)"
	}
	gpus := "NVML (loaded at run time from libnvidia-ml.so.1)"
	if !gpu.NVMLBuiltIn {
		gpus = "none: built without cgo"
	}
	fmt.Fprintf(w, "mpspawn %s\ncommit: %s\ngo: %s %s/%s\ngpu support: %s\n", version, commit, runtime.Version(), runtime.GOOS, runtime.GOARCH, gpus)
}

// launcherFlag reports whether one of names is among the launcher's own
// flags in args (those before the script, "--" or a subcommand).
func launcherFlag(args []string, fs []cli.Flag, names ...string) bool {
	valued := flagNames(fs)
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" || !strings.HasPrefix(a, "-") || a == "-" {
			return false
		}
		name, _, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		for _, n := range names {
			if name == n {
				return true
			}
		}
		if valued[name] && !hasValue {
			i++
		}
	}
	return false
}
