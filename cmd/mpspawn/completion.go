package main

import (
	"fmt"
	"io"
	"sort"
	"strings"

	"github.com/urfave/cli/v2"
)

// Shell completion (`mpspawn completion bash|zsh|fish`) and the man page
// (`mpspawn man`, which `make install` writes as mpspawn.1), both made
// from the flag and command definitions that --help shows, when asked
// for: nothing of this runs at an ordinary start.

// flagChoices are the values a flag takes, offered by completion.
var flagChoices = map[string][]string{
	fNproc:         {"gpu", "cpu", "auto", "1", "2", "4", "8"},
	fStartMethod:   {"spawn", "forkserver"},
	fGPUVisibility: {"local-rank", "isolate"},
	fCPUBind:       {"exclusive", "numa", "none"},
	fRedirects:     {"0", "1", "2", "3"},
	fTee:           {"0", "1", "2", "3"},
	fRdzvBackend:   {"static", "etcd", "c10d"},
}

// fileFlags take a path, completed as files.
var fileFlags = map[string]bool{
	fTopology: true, fLogDir: true, fSummaryJSON: true, fPython: true,
	fJUnitXML: true, "hostfile": true,
}

// flagInfo is what completion and the man page need of one flag.
type flagInfo struct {
	Names    []string // as typed: "--nproc-per-node", "--nproc_per_node", "-m"
	Value    string   // the value's placeholder, "" for a boolean flag
	Usage    string
	Category string
	Choices  []string
	File     bool
}

// flagInfos lists flags as completion and the man page show them; hidden
// flags are left out.
func flagInfos(fs []cli.Flag) []flagInfo {
	var out []flagInfo
	for _, f := range fs {
		if vf, ok := f.(cli.VisibleFlag); ok && !vf.IsVisible() {
			continue
		}
		names := f.Names()
		fi := flagInfo{Choices: flagChoices[names[0]], File: fileFlags[names[0]]}
		for _, n := range names {
			dash := "--"
			if len(n) == 1 {
				dash = "-"
			}
			fi.Names = append(fi.Names, dash+n)
			if u := strings.ReplaceAll(n, "-", "_"); u != n && len(n) > 1 {
				fi.Names = append(fi.Names, "--"+u) // torchrun's spelling
			}
		}
		if df, ok := f.(cli.DocGenerationFlag); ok {
			placeholder, usage := unquoteUsage(df.GetUsage())
			fi.Usage = usage
			if df.TakesValue() {
				if placeholder == "" {
					placeholder = "VALUE"
				}
				fi.Value = placeholder
			}
		}
		if cf, ok := f.(cli.CategorizableFlag); ok {
			fi.Category = cf.GetCategory()
		}
		out = append(out, fi)
	}
	return out
}

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print the shell completion script for bash, zsh or fish",
		UsageText: "mpspawn completion bash|zsh|fish",
		Description: "bash: source <(mpspawn completion bash), or save it under\n" +
			"/etc/bash_completion.d/mpspawn. zsh: mpspawn completion zsh > \"${fpath[1]}/_mpspawn\".\n" +
			"fish: mpspawn completion fish > ~/.config/fish/completions/mpspawn.fish.",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return usagef("completion: name one shell: bash, zsh or fish")
			}
			app := newApp(c.App.Writer, c.App.ErrWriter)
			w := c.App.Writer
			switch c.Args().First() {
			case "bash":
				writeBashCompletion(w, app)
			case "zsh":
				writeZshCompletion(w, app)
			case "fish":
				writeFishCompletion(w, app)
			default:
				return usagef("completion %s: not a shell mpspawn completes; choose bash, zsh or fish", c.Args().First())
			}
			return nil
		},
		OnUsageError: func(_ *cli.Context, err error, _ bool) error { return usageError{err} },
	}
}

func commandNames(app *cli.App) []string {
	var names []string
	for _, c := range app.Commands {
		if !c.Hidden {
			names = append(names, c.Name)
		}
	}
	sort.Strings(names)
	return names
}

func writeBashCompletion(w io.Writer, app *cli.App) {
	infos := flagInfos(app.Flags)
	var all []string
	var cases strings.Builder
	for _, fi := range infos {
		all = append(all, fi.Names...)
		pat := strings.Join(fi.Names, "|")
		switch {
		case len(fi.Choices) > 0:
			fmt.Fprintf(&cases, "\t%s) COMPREPLY=($(compgen -W %q -- \"$cur\")); return ;;\n", pat, strings.Join(fi.Choices, " "))
		case fi.File:
			fmt.Fprintf(&cases, "\t%s) COMPREPLY=($(compgen -f -- \"$cur\")); return ;;\n", pat)
		case fi.Value != "":
			fmt.Fprintf(&cases, "\t%s) return ;;\n", pat)
		}
	}
	fmt.Fprintf(w, `# bash completion for mpspawn: source <(mpspawn completion bash)
_mpspawn() {
	local cur=${COMP_WORDS[COMP_CWORD]} prev=${COMP_WORDS[COMP_CWORD-1]}
	local i
	for ((i = 1; i < COMP_CWORD; i++)); do
		case ${COMP_WORDS[i]} in
		completion) COMPREPLY=($(compgen -W "bash zsh fish" -- "$cur")); return ;;
		gpus|status|top) COMPREPLY=($(compgen -W "--json --help" -- "$cur")); return ;;
		esac
	done
	case $prev in
%s	esac
	if [[ $cur == -* ]]; then
		COMPREPLY=($(compgen -W %q -- "$cur"))
	elif ((COMP_CWORD == 1)); then
		COMPREPLY=($(compgen -W %q -- "$cur") $(compgen -f -- "$cur"))
	else
		COMPREPLY=($(compgen -f -- "$cur"))
	fi
	return 0
}
complete -o filenames -F _mpspawn mpspawn
`, cases.String(), strings.Join(append(all, "--help"), " "), strings.Join(commandNames(app), " "))
}

func writeZshCompletion(w io.Writer, app *cli.App) {
	fmt.Fprintln(w, "#compdef mpspawn\n# zsh completion for mpspawn: mpspawn completion zsh > \"${fpath[1]}/_mpspawn\"")
	fmt.Fprintln(w, "_mpspawn() {\n  _arguments -S \\")
	for _, fi := range flagInfos(app.Flags) {
		desc := zshQuote(firstSentence(fi.Usage))
		action := ""
		switch {
		case len(fi.Choices) > 0:
			action = ":" + strings.ToLower(fi.Value) + ":(" + strings.Join(fi.Choices, " ") + ")"
		case fi.File:
			action = ":" + strings.ToLower(fi.Value) + ":_files"
		case fi.Value != "":
			action = ":" + strings.ToLower(fi.Value) + ": "
		}
		for _, n := range fi.Names {
			fmt.Fprintf(w, "    '%s[%s]%s' \\\n", n, desc, action)
		}
	}
	fmt.Fprintf(w, "    '1: :(%s)' \\\n    '*:file:_files'\n}\n_mpspawn \"$@\"\n", strings.Join(commandNames(app), " "))
}

func writeFishCompletion(w io.Writer, app *cli.App) {
	fmt.Fprintln(w, "# fish completion for mpspawn: mpspawn completion fish > ~/.config/fish/completions/mpspawn.fish")
	for _, c := range commandNames(app) {
		fmt.Fprintf(w, "complete -c mpspawn -n __fish_use_subcommand -a %s\n", c)
	}
	for _, fi := range flagInfos(app.Flags) {
		var b strings.Builder
		b.WriteString("complete -c mpspawn")
		for _, n := range fi.Names {
			if strings.HasPrefix(n, "--") {
				fmt.Fprintf(&b, " -l %s", n[2:])
			} else {
				fmt.Fprintf(&b, " -s %s", n[1:])
			}
		}
		switch {
		case len(fi.Choices) > 0:
			fmt.Fprintf(&b, " -x -a '%s'", strings.Join(fi.Choices, " "))
		case fi.File:
			b.WriteString(" -r -F")
		case fi.Value != "":
			b.WriteString(" -x")
		}
		fmt.Fprintf(&b, " -d '%s'", strings.ReplaceAll(firstSentence(fi.Usage), "'", `\'`))
		fmt.Fprintln(w, b.String())
	}
	fmt.Fprintln(w, "complete -c mpspawn -n '__fish_seen_subcommand_from completion' -x -a 'bash zsh fish'")
}

// firstSentence is the start of a usage text, for one-line descriptions.
func firstSentence(s string) string {
	if i := strings.IndexAny(s, ":;("); i > 0 {
		s = s[:i]
	}
	return strings.TrimSpace(s)
}

func zshQuote(s string) string {
	return strings.NewReplacer("'", `'\''`, "[", `\[`, "]", `\]`, ":", `\:`).Replace(s)
}
