# Training curves with a 95 % band over seeds from a report's tidy csv (ssr report NAME writes
# NAME.csv and NAME.gp, which sets the variables below and loads this file). Writes NAME.png and
# NAME.pdf. Needs: base, title, xlabel, ylabel, ns (series), series[ns], logy (0 or 1); ssr plot sets
# formats too.
set datafile separator ','
set title title
set xlabel xlabel
set ylabel ylabel
set key below
if (ns == 1) unset key
set grid
if (logy) set logscale y
set style fill transparent solid 0.2 noborder
# Column 6 is the series index: each series is a band (mean ± ci) and its mean line, one colour.
draw = 'plot for [k=0:ns-1] base.".csv" skip 1 using (column(6) == k ? column(2) : NaN):($3-$4):($3+$4) with filledcurves lc k+1 notitle, '. \
       'for [k=0:ns-1] base.".csv" skip 1 using (column(6) == k ? column(2) : NaN):3 with lines lw 2 lc k+1 title series[k + 1]'
# formats (default "png pdf"): which files to write; "dumb" draws the mean lines as text on stdout
# (ssr plot without --out).
if (!exists("formats")) formats = "png pdf"
if (strstrt(formats, "dumb")) {
  set terminal dumb noenhanced size 100,30
  set output
  plot for [k=0:ns-1] base.".csv" skip 1 using (column(6) == k ? column(2) : NaN):3 with lines title series[k + 1]
}
if (strstrt(formats, "png")) {
  set terminal pngcairo noenhanced size 1000,640 font ',11'
  set output base . '.png'
  eval draw
}
if (strstrt(formats, "pdf")) {
  set terminal pdfcairo noenhanced size 8in,5in font ',10'
  set output base . '.pdf'
  eval draw
}
unset output
