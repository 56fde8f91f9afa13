/**
 * A horizontal bar chart as a hand-written SVG: one bar per system with its value at the end.
 * No chart library: the results must render on GitHub and in any browser, and stay small.
 * Bars of different units (a workload that measures both throughput and reads per second) are
 * each scaled to the largest bar of their own unit.
 */
export interface BarChart {
  title: string;
  subtitle: string;
  /** `unit` defaults to the chart's. */
  bars: { label: string; value: number; unit?: string }[];
  unit: string;
}

const WIDTH = 760;
/** The narrowest label column; a longer label widens it (at about 6.5 px per character). */
const LABEL_WIDTH_MIN = 230;
const LABEL_CHAR_PX = 6.5;
const VALUE_WIDTH = 110;
const BAR_HEIGHT = 22;
const BAR_GAP = 8;
const TOP = 58;
const COLORS = ["#3366cc", "#5b8def", "#86a9f5", "#dc7633", "#27ae60", "#8e44ad", "#7f8c8d", "#c0392b"];

export function barChartSvg(chart: BarChart): string {
  const unitOf = (bar: BarChart["bars"][number]) => bar.unit ?? chart.unit;
  const maxByUnit = new Map<string, number>();
  for (const bar of chart.bars) maxByUnit.set(unitOf(bar), Math.max(maxByUnit.get(unitOf(bar)) ?? Number.MIN_VALUE, bar.value));
  const labelWidth = Math.max(LABEL_WIDTH_MIN, Math.ceil(Math.max(0, ...chart.bars.map((bar) => bar.label.length)) * LABEL_CHAR_PX) + 16);
  const plotWidth = WIDTH - labelWidth - VALUE_WIDTH - 20;
  const height = TOP + chart.bars.length * (BAR_HEIGHT + BAR_GAP) + 16;
  const parts: string[] = [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${WIDTH}" height="${height}" viewBox="0 0 ${WIDTH} ${height}" font-family="Helvetica, Arial, sans-serif">`,
    `<rect width="100%" height="100%" fill="#ffffff"/>`,
    `<text x="10" y="22" font-size="15" font-weight="bold">${escapeXml(chart.title)}</text>`,
    `<text x="10" y="42" font-size="11" fill="#555555">${escapeXml(chart.subtitle)}</text>`,
  ];
  chart.bars.forEach((bar, index) => {
    const y = TOP + index * (BAR_HEIGHT + BAR_GAP);
    const barWidth = Math.max(1, Math.round((bar.value / maxByUnit.get(unitOf(bar))!) * plotWidth));
    const color = /\bumap\b/.test(bar.label) ? COLORS[index % 3]! : COLORS[3 + (index % 5)]!;
    parts.push(
      `<text x="${labelWidth - 8}" y="${y + BAR_HEIGHT * 0.7}" font-size="12" text-anchor="end">${escapeXml(bar.label)}</text>`,
      `<rect x="${labelWidth}" y="${y}" width="${barWidth}" height="${BAR_HEIGHT}" fill="${color}"/>`,
      `<text x="${labelWidth + barWidth + 6}" y="${y + BAR_HEIGHT * 0.7}" font-size="12">${escapeXml(formatValue(bar.value))} ${escapeXml(unitOf(bar))}</text>`,
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
