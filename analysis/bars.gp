# Grouped bars with 95 % error bars from a report's tidy csv (ssr report figN writes figN.csv and
# figN.gp, which sets the variables below and loads this file). Writes figN.png and figN.pdf.
# Needs: base, title, xlabel, ylabel, ns (series), nx (categories), series[ns], xtics_bars.
set datafile separator ','
set title title
set xlabel xlabel
set ylabel ylabel
set style fill solid 0.85 border -1
set boxwidth 0.8 / ns
set key above
if (ns == 1) unset key  # one series needs no legend
set grid ytics
# Overheads can be negative (noise, or a method faster than the baseline): 0 is always in range.
set yrange [*<0:0<*]
set xzeroaxis lt -1
set xrange [-0.6:nx - 0.4]
eval 'set xtics ' . xtics_bars . ' rotate by -30 left'
w = 0.8 / ns
# Column 6 is the series index, 7 the category index; other series' rows plot as NaN (skipped).
draw = 'plot for [k=0:ns-1] base.".csv" skip 1 using (column(6) == k ? column(7) + (k - (ns - 1) / 2.0) * w : NaN):3:4 with boxerrorbars title series[k + 1]'
set terminal pngcairo noenhanced size 1000,560 font ',11'
set output base . '.png'
eval draw
set terminal pdfcairo noenhanced size 8in,4.5in font ',10'
set output base . '.pdf'
eval draw
unset output
