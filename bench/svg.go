package main

import (
	"bytes"
	"fmt"
	"html"
	"math"
)

// chart draws decisions per second and Redis CPU per decision of every contender
// on every workload as horizontal bars, in plain SVG.
func chart(r *results) []byte {
	const (
		width, labelW, barH, gap, top = 960, 250, 18, 4, 50
		panelW                        = (width - labelW - 40) / 2
	)
	var workloads []string
	perWorkload := map[string][]*measurement{}
	for _, m := range r.runs {
		if perWorkload[m.workload] == nil {
			workloads = append(workloads, m.workload)
		}
		perWorkload[m.workload] = append(perWorkload[m.workload], m)
	}
	var maxRate, maxUsec float64
	for _, m := range r.runs {
		maxRate = math.Max(maxRate, m.perSecond())
		maxUsec = math.Max(maxUsec, m.usecPerDecision())
	}
	rows := 0
	for _, w := range workloads {
		rows += len(perWorkload[w]) + 1
	}
	height := top + rows*(barH+gap) + 20

	var b bytes.Buffer
	fmt.Fprintf(&b, `<svg xmlns="http://www.w3.org/2000/svg" width="%d" height="%d" font-family="sans-serif" font-size="12">`+"\n", width, height)
	fmt.Fprintf(&b, `<rect width="100%%" height="100%%" fill="white"/>`+"\n")
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14" font-weight="bold">decisions per second (higher is better)</text>`+"\n", labelW)
	fmt.Fprintf(&b, `<text x="%d" y="20" font-size="14" font-weight="bold">Redis CPU per decision, usec (lower is better)</text>`+"\n", labelW+panelW+40)
	fmt.Fprintf(&b, `<text x="%d" y="38" fill="#555">%s, 64 goroutines</text>`+"\n", labelW, html.EscapeString(r.redisVersion))
	y := top
	for _, w := range workloads {
		fmt.Fprintf(&b, `<text x="4" y="%d" font-weight="bold">%s</text>`+"\n", y+barH-5, html.EscapeString(w))
		y += barH + gap
		for _, m := range perWorkload[w] {
			color := "#4c78a8" // luarate
			switch m.contender {
			case noop:
				color = "#9d9d9d"
			case redisRate:
				color = "#e45756"
			}
			rate, usec := m.perSecond(), m.usecPerDecision()
			rw := int(float64(panelW-70) * rate / maxRate)
			uw := int(float64(panelW-70) * usec / maxUsec)
			fmt.Fprintf(&b, `<text x="%d" y="%d" text-anchor="end">%s</text>`+"\n", labelW-8, y+barH-5, html.EscapeString(m.contender))
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", labelW, y, rw, barH, color)
			fmt.Fprintf(&b, `<text x="%d" y="%d">%.0fk</text>`+"\n", labelW+rw+4, y+barH-5, rate/1000)
			x2 := labelW + panelW + 40
			fmt.Fprintf(&b, `<rect x="%d" y="%d" width="%d" height="%d" fill="%s"/>`+"\n", x2, y, uw, barH, color)
			fmt.Fprintf(&b, `<text x="%d" y="%d">%.2f</text>`+"\n", x2+uw+4, y+barH-5, usec)
			y += barH + gap
		}
	}
	b.WriteString("</svg>\n")
	return b.Bytes()
}
