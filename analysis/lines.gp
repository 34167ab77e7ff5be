# Lines with 95 % error bars from a report's tidy csv (ssr report figN writes figN.csv and figN.gp,
# which sets the variables below and loads this file). Writes figN.png and figN.pdf.
# Needs: base, title, xlabel, ylabel, ns (series), series[ns], logx (0 or 1), integer_x (0 or 1).
set datafile separator ','
set title title
set xlabel xlabel
set ylabel ylabel
# Labels are names (ssr_l, router.p=0.01): no enhanced-text markup. The key goes below, so
# long titles and many series both fit.
set key below
if (ns == 1) unset key
if (logx) set autoscale xfix  # log axes would round out to whole decades
set grid
if (logx) set logscale x
if (integer_x) set xtics 1
# Points at the first and last x stay clear of the frame.
set offsets graph 0.03, graph 0.03, graph 0.05, graph 0.05
draw = 'plot for [k=0:ns-1] base.".csv" skip 1 using (column(6) == k ? column(2) : NaN):3:4 with yerrorlines pointsize 0.8 title series[k + 1]'
set terminal pngcairo noenhanced size 1000,640 font ',11'
set output base . '.png'
eval draw
set terminal pdfcairo noenhanced size 8in,5in font ',10'
set output base . '.pdf'
eval draw
unset output
