// Accessible names that contain the visible text (WCAG 2.5.3, "Label in Name"), and no deprecated
// ARIA roles; checked on every page by axe-core in tools/browser_check.py. The theme's markup is
// fixed here rather than in copied templates, so a theme upgrade keeps its other changes.
function fixAccessibility() {
  // The search field shows "Search Ctrl+K": its name comes from that text, not from aria-label="Search".
  document.querySelectorAll(".search-button-field[aria-label]").forEach((b) => b.removeAttribute("aria-label"));
  // "Show code cell source" / "Hide code cell source" is the visible name of a hidden cell's toggle.
  document.querySelectorAll("details > summary[aria-label]").forEach((s) => s.removeAttribute("aria-label"));
  // The colour-mode button shows one icon, whose SVG title ("Light", "Dark", "System Settings") counts
  // as its visible text but is missing from the button's name, "Color mode". The titles go (the
  // button's own tooltip says "Color mode"), whether Font Awesome has made the SVGs yet or not.
  document.querySelectorAll(".theme-switch-button i[title]").forEach((i) => i.removeAttribute("title"));
  document.querySelectorAll(".theme-switch-button svg title").forEach((t) => t.remove());
  document.querySelectorAll(".theme-switch-button svg[aria-labelledby]").forEach((s) => s.removeAttribute("aria-labelledby"));
  // The bibliography: role="doc-biblioentry" is deprecated (WAI-ARIA 1.3); its entries are list items.
  document.querySelectorAll('[role="doc-biblioentry"]').forEach((e) => e.setAttribute("role", "listitem"));
}
if (document.readyState === "loading") {
  document.addEventListener("DOMContentLoaded", fixAccessibility);
} else {
  fixAccessibility();
}
