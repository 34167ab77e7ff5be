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
# Okabe-Ito colours, told apart with the common colour-vision deficiencies, each with its own dash
# pattern and marker: overlapping lines (a baseline under its variants) stay distinguishable.
array okabe[8] = ["#000000", "#E69F00", "#56B4E9", "#009E73", "#D55E00", "#0072B2", "#CC79A7", "#999999"]
do for [k=1:8] { set linetype k lc rgb okabe[k] lw 2 dashtype k pointtype k + 3 pointsize 0.9 }
set linetype cycle 8
# A point at the first or last step stays clear of the frame, without rounding the axes out to
# the next tic.
set autoscale fix
set offsets graph 0.02, graph 0.02, graph 0.05, graph 0.05
# Bands of a metric that is never negative (loss, dead experts, load CV) stop at 0; markers about
# a dozen per line.
stats base.".csv" skip 1 using 3 nooutput
ylo = STATS_min >= 0 ? 0 : -1e300
pint = int(STATS_records / ns / 12) > 1 ? int(STATS_records / ns / 12) : 1
# Column 6 is the series index: each series is a band (mean ± ci) and its mean line, one linetype;
# the first series (the baseline) is drawn again last, on top of the others.
draw = 'plot for [k=0:ns-1] base.".csv" skip 1 using (column(6) == k ? column(2) : NaN):($3-$4 < ylo ? ylo : $3-$4):($3+$4) with filledcurves lt k+1 notitle, '. \
       'for [k=0:ns-1] base.".csv" skip 1 using (column(6) == k ? column(2) : NaN):3 with linespoints lt k+1 pi pint title series[k + 1], '. \
       'base.".csv" skip 1 using (column(6) == 0 ? column(2) : NaN):3 with linespoints lt 1 pi pint notitle'
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
