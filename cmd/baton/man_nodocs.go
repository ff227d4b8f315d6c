//go:build linux && urfave_cli_no_docs

package main

import (
	"errors"

	"github.com/urfave/cli/v2"
)

// errNoManPage is what `baton man` says in a build without urfave/cli's
// man page generator (make build's; see man.go for why).
var errNoManPage = errors.New("man: this baton was built with the tag urfave_cli_no_docs, without the man page generator: " +
	"read the installed page with man baton (make install puts it in place; make docs writes it to bin/baton.1), or use a plain go build of ./cmd/baton, which prints it")

// manCommand stands in for the man page command of man.go: the same name,
// hidden, and a non-zero exit naming where the page comes from.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the man page (roff)",
		Hidden: true,
		Action: func(c *cli.Context) error { return errNoManPage },
	}
}
