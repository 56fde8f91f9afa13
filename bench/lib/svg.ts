/**
 * A horizontal bar chart as a hand-written SVG: one bar per system with its value at the end.
 * No chart library: the results must render on GitHub and in any browser, and stay small.
 */
export interface BarChart {
  title: string;
  subtitle: string;
  bars: { label: string; value: number }[];
  unit: string;
}

const WIDTH = 760;
const LABEL_WIDTH = 230;
const VALUE_WIDTH = 110;
const BAR_HEIGHT = 22;
const BAR_GAP = 8;
const TOP = 58;
const COLORS = ["#3366cc", "#5b8def", "#86a9f5", "#dc7633", "#27ae60", "#8e44ad", "#7f8c8d", "#c0392b"];

export function barChartSvg(chart: BarChart): string {
  const max = Math.max(...chart.bars.map((bar) => bar.value), Number.MIN_VALUE);
  const plotWidth = WIDTH - LABEL_WIDTH - VALUE_WIDTH - 20;
  const height = TOP + chart.bars.length * (BAR_HEIGHT + BAR_GAP) + 16;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${escapeXml(chart.title)}</text>`,
    `<text x="10" y="42" font-size="11" fill="#555555">${escapeXml(chart.subtitle)}</text>`,
  ];
  chart.bars.forEach((bar, index) => {
    const y = TOP + index * (BAR_HEIGHT + BAR_GAP);
    const barWidth = Math.max(1, Math.round((bar.value / max) * plotWidth));
    const color = bar.label.startsWith("umap") ? COLORS[index % 3]! : COLORS[3 + (index % 5)]!;
    parts.push(
      `<text x="${LABEL_WIDTH - 8}" y="${y + BAR_HEIGHT * 0.7}" font-size="12" text-anchor="end">${escapeXml(bar.label)}</text>`,
      `<rect x="${LABEL_WIDTH}" y="${y}" width="${barWidth}" height="${BAR_HEIGHT}" fill="${color}"/>`,
      `<text x="${LABEL_WIDTH + barWidth + 6}" y="${y + BAR_HEIGHT * 0.7}" font-size="12">${escapeXml(formatValue(bar.value))} ${escapeXml(chart.unit)}</text>`,
    );
  });
  parts.push(`</svg>`);
  return parts.join("\n") + "\n";
}

function formatValue(value: number): string {
  if (value >= 1000) return Math.round(value).toLocaleString("en-US");
  return value.toPrecision(3);
}

function escapeXml(text: string): string {
  return text.replace(/[<>&"]/g, (c) => ({ "<": "&lt;", ">": "&gt;", "&": "&amp;", '"': "&quot;" })[c]!);
}
