//go:build linux && !urfave_cli_no_docs

package main

import (
	"fmt"
	"strings"

	"github.com/urfave/cli/v2"
)

// urfave/cli writes the man page as markdown and converts it to roff with
// go-md2man, which links blackfriday; blackfriday's package initialisation
// (its tables, about 0.5 ms of CPU) would run at every exec of baton, each
// new master's included. So make build sets urfave_cli_no_docs, which
// leaves that code out (man_nodocs.go), and make docs builds this file in
// a second binary (bin/baton-docs) only to print the page. A plain go build
// has both.

// manCommand prints baton(1) in roff. Hidden: it is for the Makefile, which
// installs the page; people read it with man baton.
func manCommand() *cli.Command {
	return &cli.Command{
		Name:   "man",
		Usage:  "print the man page (roff)",
		Hidden: true,
		Action: func(c *cli.Context) error {
			s, err := c.App.ToManWithSection(1)
			if err != nil {
				return fmt.Errorf("man page: %w", err)
			}
			// The page's footer names the version it documents.
			s = strings.Replace(s, ".TH baton 1", fmt.Sprintf(".TH baton 1 \"\" \"baton %s\"", c.App.Version), 1)
			fmt.Fprint(c.App.Writer, s)
			return nil
		},
	}
}
