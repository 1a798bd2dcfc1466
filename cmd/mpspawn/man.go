package main

import (
	"fmt"
	"io"
	"strings"

	"github.com/mpspawn/mpspawn"
	"github.com/urfave/cli/v2"
)

// manCommand prints the man page, mpspawn(1), made from the same flag
// and command definitions as --help; `make install` installs it.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the man page (roff), as make install installs it",
		Hidden: true,
		Action: func(c *cli.Context) error {
			writeMan(c.App.Writer, newApp(c.App.Writer, c.App.ErrWriter))
			return nil
		},
	}
}

// roff escapes text for a man page line.
func roff(s string) string {
	s = strings.NewReplacer(`\`, `\e`, "-", `\-`, "`", "").Replace(s)
	if strings.HasPrefix(s, ".") || strings.HasPrefix(s, "'") {
		s = `\&` + s
	}
	return s
}

func writeMan(w io.Writer, app *cli.App) {
	fmt.Fprintf(w, ".TH MPSPAWN 1 \"\" \"mpspawn %s\" \"User Commands\"\n", roff(mpspawn.Version()))
	fmt.Fprintf(w, ".SH NAME\nmpspawn \\- %s\n.SH SYNOPSIS\n", roff(app.Usage))
	for _, l := range strings.Split(app.UsageText, "\n") {
		fmt.Fprintf(w, ".B mpspawn\n%s\n.br\n", roff(strings.TrimPrefix(l, "mpspawn ")))
	}
	fmt.Fprintln(w, ".SH DESCRIPTION")
	for _, para := range strings.Split(app.Description, "\n\n") {
		fmt.Fprintf(w, ".PP\n%s\n", roff(strings.ReplaceAll(para, "\n", " ")))
	}
	fmt.Fprintln(w, ".SH OPTIONS")
	cat := "\x00"
	for _, fi := range flagInfos(app.Flags) {
		if fi.Category != cat {
			cat = fi.Category
			title := cat
			if title == "" {
				title = "Other"
			}
			fmt.Fprintf(w, ".SS %s\n", roff(title))
		}
		names := make([]string, len(fi.Names))
		for i, n := range fi.Names {
			names[i] = `\fB` + roff(n) + `\fR`
		}
		head := strings.Join(names, ", ")
		if fi.Value != "" {
			head += ` \fI` + roff(fi.Value) + `\fR`
		}
		fmt.Fprintf(w, ".TP\n%s\n%s\n", head, roff(fi.Usage))
	}
	fmt.Fprintln(w, ".SH COMMANDS")
	for _, c := range app.Commands {
		if c.Hidden {
			continue
		}
		fmt.Fprintf(w, ".TP\n\\fBmpspawn %s\\fR\n%s\n", roff(c.Name), roff(c.Usage))
	}
	fmt.Fprintf(w, `.SH ENVIRONMENT
.TP
\fBPET_\fIFLAG\fR
every flag, upper case with underscores (PET_NPROC_PER_NODE), as torchrun reads them
.TP
\fBPYTHON_EXEC\fR
the interpreter for scripts, when \-\-python is not given
.SH SEE ALSO
torchrun(1), srun(1)
`)
}
